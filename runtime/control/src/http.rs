//! HTTP answers the management API shares: JSON bodies, errors with a
//! code, 429 with `Retry-After`, refusals, bodies read within a size and a
//! time, query strings.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use sluice_server::admin::web::{BODY_TIMEOUT, BodyError};

use crate::refusal::Refusal;
use crate::throttle::retry_after_secs;

/// An answer.
pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn json_response(status: u16, body: &Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn error(status: u16, code: &str, message: &str) -> Resp {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

/// 429 with `Retry-After`.
pub(crate) fn too_many(wait: Duration, code: &str, message: &str) -> Resp {
    let mut resp = error(429, code, message);
    if let Ok(v) = http::HeaderValue::from_str(&retry_after_secs(wait).to_string()) {
        resp.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    resp
}

pub(crate) fn refusal(r: &Refusal) -> Resp {
    let mut body = json!({ "error": { "code": r.code, "message": r.message } });
    if let Some(report) = &r.report {
        body["report"] = serde_json::to_value(report).unwrap_or(Value::Null);
    }
    if !r.problems.is_empty() {
        body["problems"] = json!(r.problems);
    }
    if !r.fields.is_empty() {
        body["fields"] = json!(r.fields);
    }
    if let Some(current) = r.revision {
        body["revision"] = json!(current);
    }
    let mut resp = json_response(r.status, &body);
    if r.status == 429 || r.status == 503 {
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    resp
}

pub(crate) async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Resp> {
    sluice_server::admin::web::read_body(req.into_body(), max, BODY_TIMEOUT)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(max) => error(
                413,
                "too_large",
                &format!(
                    "the request body is over {max} bytes (for a push: the component is larger than the tenant's [managed] max_component_bytes allows)"
                ),
            ),
            BodyError::TimedOut => {
                let mut resp = error(
                    408,
                    "body_timeout",
                    &format!(
                        "the request body did not arrive within {} s",
                        BODY_TIMEOUT.as_secs()
                    ),
                );
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                resp
            }
            BodyError::Unreadable(e) => error(400, "bad_request", &format!("reading the body: {e}")),
        })
}

pub(crate) fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

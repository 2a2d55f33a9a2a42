//! What `sluice handler` sends: request bodies of the management API.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::record::Stage;
use crate::verify::Sample;

/// The body of a push: the component in base64, the samples (`None`: the
/// server takes `examples` from the routes' schemas), the stage.
pub fn push_body(
    component: &[u8],
    samples: Option<&[Sample]>,
    stage: Option<Stage>,
    percent: Option<u8>,
) -> Vec<u8> {
    let mut body = json!({
        "component": base64::engine::general_purpose::STANDARD.encode(component),
    });
    if let Some(s) = samples {
        body["samples"] = serde_json::to_value(s).unwrap_or(Value::Null);
    }
    if let Some(s) = stage {
        body["stage"] = serde_json::to_value(s).unwrap_or(Value::Null);
    }
    if let Some(p) = percent {
        body["percent"] = json!(p);
    }
    body.to_string().into_bytes()
}

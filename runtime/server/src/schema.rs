//! JSON Schema validation of every message's `data`, with the route's schema
//! compiled once at load.
//!
//! Tenant-supplied schemas are untrusted too: the jsonschema crate is built
//! without its HTTP and file resolvers, every external `$ref` goes to a
//! retriever that refuses, `pattern` uses the linear-time `regex` engine
//! (a pattern it cannot compile is refused at load), and schemas are bounded
//! in size. Compilation runs off the async runtime.

use jsonschema::{PatternOptions, Retrieve, Uri, Validator};
use serde_json::Value;

use sluice_protocol::{ErrorCode, Rejection};

/// Largest schema accepted, serialized.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;

/// Refuses every external reference.
struct NoRemoteRefs;

impl Retrieve for NoRemoteRefs {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!(
            "external $ref {} refused: schemas must be self-contained",
            uri.as_str()
        )
        .into())
    }
}

/// A compiled schema.
pub struct Schema {
    validator: Validator,
}

impl Schema {
    /// Compile a schema; errors are readable and name the problem.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        let size = schema.to_string().len();
        if size > MAX_SCHEMA_BYTES {
            return Err(format!(
                "schema is {size} bytes; at most {MAX_SCHEMA_BYTES}"
            ));
        }
        let validator = jsonschema::options()
            .with_retriever(NoRemoteRefs)
            .with_pattern_options(PatternOptions::regex())
            .build(schema)
            .map_err(|e| format!("schema does not compile: {e}"))?;
        Ok(Self { validator })
    }

    /// Check `data`. The rejection names the keyword that failed and where
    /// it sits in the schema (which the tenant wrote), never anything from
    /// the data: not its values and not its path, whose object keys the
    /// client chooses (`{"<anything>": 1}` against `additionalProperties`
    /// would put `<anything>` into the message).
    pub fn check(&self, data: &Value) -> Result<(), Rejection> {
        match self.validator.iter_errors(data).next() {
            None => Ok(()),
            Some(e) => Err(Rejection::error(
                ErrorCode::SchemaInvalid,
                format!(
                    "data fails `{}` at schema #{}",
                    e.kind().keyword(),
                    e.schema_path()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;

    #[test]
    fn external_refs_are_refused_at_compile_time() {
        for uri in [
            "file:///etc/passwd",
            "http://169.254.169.254/latest/meta-data/",
            "https://example.com/s.json",
        ] {
            let err = Schema::compile(&json!({"$ref": uri}))
                .err()
                .expect("refused");
            assert!(err.contains("refused"), "{uri}: {err}");
        }
        // Local references still work.
        let s = Schema::compile(&json!({"$defs": {"t": {"type": "string"}}, "$ref": "#/$defs/t"}))
            .unwrap();
        assert!(s.check(&json!("x")).is_ok());
        assert!(s.check(&json!(1)).is_err());
    }

    #[test]
    fn patterns_run_in_linear_time() {
        let s = Schema::compile(&json!({"type": "string", "pattern": "^(a+)+$"})).unwrap();
        let evil = format!("{}!", "a".repeat(50_000));
        let started = Instant::now();
        assert!(s.check(&json!(evil)).is_err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        // Lookaround needs backtracking: refused at load.
        assert!(Schema::compile(&json!({"pattern": "(?=a)a"})).is_err());
    }

    fn message(s: &Schema, data: &Value) -> String {
        match s.check(data) {
            Err(Rejection::Error { code, message, .. }) => {
                assert_eq!(code, "schema_invalid");
                message
            }
            other => panic!("{data}: {other:?}"),
        }
    }

    #[test]
    fn rejections_name_schema_location_and_keyword_not_the_value() {
        let s = Schema::compile(&json!({
            "type": "object", "required": ["text"],
            "properties": {"text": {"type": "string", "maxLength": 3}}
        }))
        .unwrap();
        let m = message(&s, &json!({"text": "secret-value"}));
        assert_eq!(
            m,
            "data fails `maxLength` at schema #/properties/text/maxLength"
        );
        assert_eq!(
            message(&s, &json!("secret")),
            "data fails `type` at schema #/type"
        );
    }

    #[test]
    fn rejections_never_echo_keys_the_client_chose() {
        let s = Schema::compile(&json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "additionalProperties": {"type": "integer"},
            "propertyNames": {"maxLength": 20},
        }))
        .unwrap();
        let cases = [
            (
                json!({"SECRET_key": "x"}),
                "type",
                "#/additionalProperties/type",
            ),
            (
                json!({"SECRET_key_longer_than_twenty": 1}),
                "propertyNames",
                "#/propertyNames/maxLength",
            ),
        ];
        for (data, keyword, at) in cases {
            let m = message(&s, &data);
            assert_eq!(
                m,
                format!("data fails `{keyword}` at schema {at}"),
                "{data}"
            );
            assert!(!m.contains("SECRET"), "{m}");
        }
        // Deeper: keys in nested objects and array positions stay out too.
        let s = Schema::compile(&json!({
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"additionalProperties": false}},
        }))
        .unwrap();
        let m = message(&s, &json!({"SECRET_outer": [{}, {"SECRET_inner": 1}]}));
        assert_eq!(
            m,
            "data fails `falseSchema` at schema #/additionalProperties/items/additionalProperties"
        );
    }

    #[test]
    fn oversized_schemas_are_refused() {
        let big = json!({"enum": vec!["x".repeat(100); 1000]});
        assert!(Schema::compile(&big).is_err());
    }
}

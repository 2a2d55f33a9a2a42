//! `[tenants.<id>.routes.<type>]`: the message types a tenant accepts, the
//! handler each goes to, the scopes it needs, its channel and its schema.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a route does with its channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelAccess {
    /// The route takes no channel; a message carrying one is refused.
    #[default]
    None,
    /// The message publishes to its channel: needs publish permission.
    Publish,
    /// The message subscribes to (or leaves) its channel: needs subscribe
    /// permission.
    Subscribe,
}

/// One message type a tenant accepts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The handler (by name) that receives it.
    pub handler: String,
    /// Scopes the token must carry.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// What the route does with its channel.
    #[serde(default)]
    pub channel: ChannelAccess,
    /// The JSON Schema of `data`, inline.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// The JSON Schema of `data`, from a file.
    #[serde(default)]
    pub schema_file: Option<PathBuf>,
}

/// What a route's tenant says of the handler it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandlerKnown {
    /// Configured (perhaps unreadably: that is its own problem, reported
    /// already), or acceptable as a pushed handler's name.
    Yes,
    /// Unknown, in a tenant that manages handlers through the API.
    NoManaged,
    /// Unknown, in a tenant without `[tenants.<id>.managed]`.
    No,
}

impl RouteConfig {
    /// What is wrong with route `route` of the tenant at `at`
    /// (`tenants.<id>`), whose handler is `known` or not.
    pub(crate) fn problems(&self, at: &str, route: &str, known: HandlerKnown) -> Vec<String> {
        let mut problems = Vec::new();
        if sluice_protocol::is_reserved_type(route) {
            problems.push(format!(
                "{at}.routes.{route}: `{route}` is a reserved message type"
            ));
        }
        if matches!(known, HandlerKnown::NoManaged | HandlerKnown::No) {
            problems.push(format!(
                "{at}.routes.{route}: no handler named {:?}{}",
                self.handler,
                if known == HandlerKnown::NoManaged {
                    ""
                } else {
                    " (a handler pushed through the management API needs [tenants.<id>.managed])"
                }
            ));
        }
        if self.schema.is_some() && self.schema_file.is_some() {
            problems.push(format!(
                "{at}.routes.{route}: set schema or schema_file, not both"
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(text: &str) -> RouteConfig {
        toml::from_str(&format!("handler = \"chat\"\n{text}")).unwrap()
    }

    #[test]
    fn a_route_takes_no_channel_no_scope_and_no_schema_by_default() {
        let r = route("");
        assert_eq!(r.channel, ChannelAccess::None);
        assert!(r.scopes.is_empty() && r.schema.is_none() && r.schema_file.is_none());
        assert!(
            r.problems("tenants.t", "chat.send", HandlerKnown::Yes)
                .is_empty()
        );
        assert_eq!(
            route("channel = \"publish\"").channel,
            ChannelAccess::Publish
        );
        assert!(toml::from_str::<RouteConfig>("handler = \"h\"\nchannel = \"both\"").is_err());
    }

    #[test]
    fn reserved_types_unknown_handlers_and_two_schemas_are_refused() {
        assert_eq!(
            route("").problems("tenants.t", "ping", HandlerKnown::Yes),
            ["tenants.t.routes.ping: `ping` is a reserved message type"]
        );
        assert_eq!(
            route("").problems("tenants.t", "a", HandlerKnown::No),
            [
                "tenants.t.routes.a: no handler named \"chat\" (a handler pushed through the management API needs [tenants.<id>.managed])"
            ]
        );
        assert_eq!(
            route("").problems("tenants.t", "a", HandlerKnown::NoManaged),
            ["tenants.t.routes.a: no handler named \"chat\""]
        );
        assert_eq!(
            route("schema = { type = \"object\" }\nschema_file = \"s.json\"").problems(
                "tenants.t",
                "a",
                HandlerKnown::Yes
            ),
            ["tenants.t.routes.a: set schema or schema_file, not both"]
        );
    }
}

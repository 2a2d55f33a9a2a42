//! Authorize a route message: the route exists for this tenant, the
//! principal holds its scopes, and its channel (if it takes one) is valid
//! and allowed by the tenant's channel rules for what the route does.

use std::collections::HashMap;

use sluice_config::ChannelAccess;
use sluice_protocol::{self as protocol, Envelope, ErrorCode, Rejection};

use crate::authz::{
    ChannelFeatures, ChannelOp, ChannelRule, Principal, channel_allowed, has_scopes, permit,
};
use crate::tenant::{Route, Tenant};

/// A message the principal may send.
pub struct Authorized<'t> {
    /// Its route.
    pub route: &'t Route,
    /// The message.
    pub envelope: Envelope,
}

/// Authorize `envelope` for `principal` on `tenant`.
pub fn authorize<'t>(
    tenant: &'t Tenant,
    principal: &Principal,
    envelope: Envelope,
) -> Result<Authorized<'t>, Rejection> {
    route_message(&tenant.routes, &tenant.channels, principal, envelope)
}

/// Authorize `envelope` for `principal` against a tenant's `routes` and
/// channel `rules`.
pub fn route_message<'t>(
    routes: &'t HashMap<String, Route>,
    rules: &[ChannelRule],
    principal: &Principal,
    envelope: Envelope,
) -> Result<Authorized<'t>, Rejection> {
    let route = routes
        .get(&envelope.kind)
        .ok_or_else(|| Rejection::error(ErrorCode::UnknownType, "no such message type"))?;
    if !has_scopes(principal, &route.scopes) {
        return Err(Rejection::error(
            ErrorCode::Forbidden,
            "missing scope for this message type",
        ));
    }
    match (route.channel, envelope.channel.as_deref()) {
        (ChannelAccess::None, None) => {}
        (ChannelAccess::None, Some(_)) => {
            return Err(Rejection::error(
                ErrorCode::BadEnvelope,
                "this message type takes no channel",
            ));
        }
        (_, None) => {
            return Err(Rejection::error(
                ErrorCode::BadEnvelope,
                "this message type needs a channel",
            ));
        }
        (access, Some(channel)) => {
            if !protocol::is_valid_channel(channel) {
                return Err(Rejection::error(
                    ErrorCode::InvalidChannel,
                    "invalid channel name",
                ));
            }
            let op = if access == ChannelAccess::Publish {
                ChannelOp::Publish
            } else {
                ChannelOp::Subscribe
            };
            if !channel_allowed(rules, principal, channel, op) {
                return Err(Rejection::error(
                    ErrorCode::Forbidden,
                    "not allowed on this channel",
                ));
            }
        }
    }
    Ok(Authorized { route, envelope })
}

/// Authorize a subscription: a valid channel name that the tenant's rules
/// let `principal` subscribe to. The channel's features (history,
/// presence), read from the same rules.
pub fn subscription(
    tenant: &Tenant,
    principal: &Principal,
    channel: &str,
) -> Result<ChannelFeatures, Rejection> {
    subscription_in(&tenant.channels, principal, channel)
}

/// [`subscription`] against a tenant's channel `rules`.
pub fn subscription_in(
    rules: &[ChannelRule],
    principal: &Principal,
    channel: &str,
) -> Result<ChannelFeatures, Rejection> {
    if !protocol::is_valid_channel(channel) {
        return Err(Rejection::error(
            ErrorCode::InvalidChannel,
            "invalid channel name",
        ));
    }
    permit(rules, principal, channel, ChannelOp::Subscribe).ok_or_else(|| {
        Rejection::error(
            ErrorCode::Forbidden,
            "not allowed to subscribe to this channel",
        )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_config::ChannelRuleConfig;
    use sluice_protocol::Code;
    use sluice_sandbox::{CallError, CallOutcome, Handler};

    use super::*;
    use crate::slot::{HandlerSlot, Picked};
    use crate::tenant::RouteHandler;

    /// A route's handler that is never called: authorization comes first.
    struct Unreached;

    impl HandlerSlot for Unreached {
        fn name(&self) -> &str {
            "unreached"
        }
        fn pick(&self, _conn_id: u64) -> Option<Picked> {
            None
        }
        fn compare_shadow(
            &self,
            _route: &str,
            _served: &Result<CallOutcome, CallError>,
            _rehearsed: &Result<CallOutcome, CallError>,
        ) {
        }
        fn serving(&self) -> Vec<(u32, Handler)> {
            Vec::new()
        }
    }

    fn route(scopes: &[&str], channel: ChannelAccess) -> Route {
        Route {
            handler: RouteHandler::Pushed(Arc::new(Unreached)),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            channel,
            schema: None,
        }
    }

    fn routes() -> HashMap<String, Route> {
        HashMap::from([
            ("echo".to_owned(), route(&[], ChannelAccess::None)),
            (
                "admin.op".to_owned(),
                route(&["admin"], ChannelAccess::None),
            ),
            ("chat.send".to_owned(), route(&[], ChannelAccess::Publish)),
            ("chat.join".to_owned(), route(&[], ChannelAccess::Subscribe)),
        ])
    }

    fn rules() -> Vec<ChannelRule> {
        let rule = |pattern: &str, publish: bool| {
            let c: ChannelRuleConfig = serde_json::from_value(serde_json::json!({
                "pattern": pattern, "subscribe": true, "publish": publish, "presence": true,
            }))
            .unwrap();
            ChannelRule::compile(&c).unwrap()
        };
        vec![rule("room:{id}", true), rule("news", false)]
    }

    fn alice() -> Principal {
        Principal {
            subject: "alice".into(),
            claims: Default::default(),
            scopes: Default::default(),
            expires_at: 0,
        }
    }

    fn message(kind: &str, channel: Option<&str>) -> Envelope {
        let mut text = serde_json::json!({ "type": kind, "data": {} });
        if let Some(c) = channel {
            text["channel"] = c.into();
        }
        protocol::decode(&text.to_string(), 16).unwrap()
    }

    fn code(r: Result<Authorized<'_>, Rejection>) -> Option<String> {
        match r {
            Ok(_) => None,
            Err(rejection) => rejection.code().map(|c: &Code| c.as_str().to_owned()),
        }
    }

    #[test]
    fn each_refusal_names_its_code_and_allowed_messages_pass() {
        let (routes, rules, alice) = (routes(), rules(), alice());
        let check = |kind: &str, channel: Option<&str>| {
            code(route_message(
                &routes,
                &rules,
                &alice,
                message(kind, channel),
            ))
        };
        assert_eq!(check("echo", None), None);
        assert_eq!(check("nope", None).as_deref(), Some("unknown_type"));
        assert_eq!(check("admin.op", None).as_deref(), Some("forbidden"));
        assert_eq!(
            check("echo", Some("room:1")).as_deref(),
            Some("bad_envelope")
        );
        assert_eq!(check("chat.send", None).as_deref(), Some("bad_envelope"));
        assert_eq!(check("chat.send", Some("room:1")), None);
        assert_eq!(
            check("chat.send", Some("news")).as_deref(),
            Some("forbidden")
        );
        assert_eq!(check("chat.join", Some("news")), None);
        assert_eq!(
            check("chat.join", Some("secret:1")).as_deref(),
            Some("forbidden")
        );
        assert_eq!(
            check("chat.send", Some("room 1")).as_deref(),
            Some("invalid_channel")
        );
    }

    #[test]
    fn scopes_open_their_routes() {
        let (routes, rules) = (routes(), rules());
        let mut admin = alice();
        admin.scopes = ["admin"].into_iter().collect();
        assert!(route_message(&routes, &rules, &admin, message("admin.op", None)).is_ok());
    }

    #[test]
    fn a_subscription_is_authorized_with_the_channel_s_features() {
        let (rules, alice) = (rules(), alice());
        let features = subscription_in(&rules, &alice, "room:7").unwrap();
        assert!(features.presence && features.history.is_none());
        let refused = |channel: &str| {
            subscription_in(&rules, &alice, channel)
                .err()
                .and_then(|r| r.code().map(|c| c.as_str().to_owned()))
        };
        assert_eq!(refused("other:1").as_deref(), Some("forbidden"));
        assert_eq!(refused("").as_deref(), Some("invalid_channel"));
    }
}

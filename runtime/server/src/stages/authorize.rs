//! Authorize a route message: the route exists for this tenant, the
//! principal holds its scopes, and its channel (if it takes one) is valid
//! and allowed by the tenant's channel rules for what the route does.

use sluice_config::ChannelAccess;
use sluice_protocol::{self as protocol, Envelope, ErrorCode, Rejection};

use crate::authz::{ChannelFeatures, ChannelOp, Principal, channel_allowed, has_scopes, permit};
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
    let route = tenant
        .routes
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
            if !channel_allowed(&tenant.channels, principal, channel, op) {
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
    if !protocol::is_valid_channel(channel) {
        return Err(Rejection::error(
            ErrorCode::InvalidChannel,
            "invalid channel name",
        ));
    }
    permit(&tenant.channels, principal, channel, ChannelOp::Subscribe).ok_or_else(|| {
        Rejection::error(
            ErrorCode::Forbidden,
            "not allowed to subscribe to this channel",
        )
    })
}

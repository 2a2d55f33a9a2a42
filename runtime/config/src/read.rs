//! Reading the TOML document table by table, so that one typo does not hide
//! the next: each section, tenant, handler and route is deserialized on its
//! own and its problem recorded, and what could be read is kept for the
//! checks that follow.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use crate::handler::HandlerConfig;
use crate::name::is_name;
use crate::route::RouteConfig;
use crate::tenant::TenantConfig;

/// Section `key` of `root`, taken out of it: `None` when it is absent or
/// could not be read (its problem is recorded).
pub(crate) fn section<T: DeserializeOwned>(
    root: &mut toml::Table,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let value = root.remove(key)?;
    deserialize(value, key, problems)
}

/// `value` read as a `T`; its problem is recorded under `at`.
fn deserialize<T: DeserializeOwned>(
    value: toml::Value,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    match T::deserialize(value) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(format!("{at}: {}", e.to_string().trim()));
            None
        }
    }
}

/// Read one tenant, table by table, so that problems in its handlers,
/// routes and auth are all reported. A handler that could not be read is
/// added to `unparsed_handlers` as (tenant, name).
pub(crate) fn tenant(
    id: &str,
    value: toml::Value,
    problems: &mut Vec<String>,
    unparsed_handlers: &mut Vec<(String, String)>,
) -> Option<TenantConfig> {
    let at = format!("tenants.{id}");
    let toml::Value::Table(mut table) = value else {
        problems.push(format!("{at} must be a table"));
        return None;
    };
    let mut handlers = BTreeMap::new();
    if let Some(toml::Value::Table(hs)) = table.remove("handlers") {
        for (name, v) in hs {
            if !is_name(&name) {
                problems.push(format!(
                    "{at}.handlers.{name}: handler names are 1-64 of a-z 0-9 _ -"
                ));
            }
            match deserialize::<HandlerConfig>(v, &format!("{at}.handlers.{name}"), problems) {
                Some(h) => {
                    handlers.insert(name, h);
                }
                None => unparsed_handlers.push((id.to_owned(), name)),
            }
        }
    }
    let mut routes = BTreeMap::new();
    if let Some(toml::Value::Table(rs)) = table.remove("routes") {
        for (name, v) in rs {
            if let Some(r) = deserialize::<RouteConfig>(v, &format!("{at}.routes.{name}"), problems)
            {
                routes.insert(name, r);
            }
        }
    }
    table.insert("handlers".into(), toml::Value::Table(toml::Table::new()));
    table.insert("routes".into(), toml::Value::Table(toml::Table::new()));
    let mut tenant = deserialize::<TenantConfig>(toml::Value::Table(table), &at, problems)?;
    tenant.handlers = handlers;
    tenant.routes = routes;
    // Kept even when some of its parts failed, so that the checks that
    // follow report their problems too.
    Some(tenant)
}

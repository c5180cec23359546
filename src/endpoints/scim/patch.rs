//! SCIM PATCH (RFC 7644 §3.5.2) applied to a resource's JSON, as Okta and Microsoft Entra ID send
//! it: `op` in any case (`replace`, `Replace`); with no `path`, a `value` object whose members are
//! each set (Okta's `{"op": "replace", "value": {"active": false}}`); with a `path`, an attribute
//! (`active`), a sub-attribute (`name.givenName`), or a filtered multi-valued one
//! (`emails[type eq "work"].value`, `members[value eq "…"]`). Attribute names match in any case,
//! as SCIM says. Multi-valued `add` appends (members are never doubled); `remove` with a list of
//! values removes those. What the result means is checked afterwards, as for a PUT.

use serde_json::{Map, Value};

/// Applies every operation of a PatchOp request to `resource`; the error says what was wrong.
pub fn apply(resource: &mut Map<String, Value>, request: &Value) -> Result<(), String> {
    let schemas_ok = request["schemas"].as_array().is_some_and(|s| {
        s.iter()
            .any(|x| x == "urn:ietf:params:scim:api:messages:2.0:PatchOp")
    });
    if !schemas_ok {
        return Err(
            "a PATCH body's schemas must include urn:ietf:params:scim:api:messages:2.0:PatchOp"
                .into(),
        );
    }
    let ops = request
        .get("Operations")
        .or_else(|| request.get("operations"))
        .and_then(Value::as_array)
        .ok_or("a PATCH body needs an Operations list")?;
    for op in ops {
        let kind = op["op"].as_str().unwrap_or("").to_ascii_lowercase();
        if !matches!(kind.as_str(), "add" | "replace" | "remove") {
            return Err(format!("op {} is not add, replace or remove", op["op"]));
        }
        let value = op.get("value").cloned();
        match op.get("path").and_then(Value::as_str) {
            Some(path) => at_path(resource, &kind, path, value)?,
            None => {
                let Some(Value::Object(members)) = value else {
                    return Err("an operation without a path needs an object value".into());
                };
                for (k, v) in members {
                    at_path(resource, &kind, &k, Some(v))?;
                }
            }
        }
    }
    Ok(())
}

/// The key of `obj` that is `name` in any case (SCIM attribute names are case-insensitive).
fn key(obj: &Map<String, Value>, name: &str) -> String {
    obj.keys()
        .find(|k| k.eq_ignore_ascii_case(name))
        .cloned()
        .unwrap_or_else(|| name.to_string())
}

/// `attr[sub eq "value"].rest` → (attr, Some((sub, value)), rest).
type Path<'a> = (&'a str, Option<(String, String)>, Option<&'a str>);

fn parse_path(path: &str) -> Result<Path<'_>, String> {
    let bad = || format!("path `{path}` is not one castellan understands");
    match path.split_once('[') {
        None => Ok(match path.split_once('.') {
            // A schema URN prefix (urn:…:User:name.givenName) is not supported: castellan's
            // resources have only the core schema.
            Some((attr, sub)) => (attr, None, Some(sub)),
            None => (path, None, None),
        }),
        Some((attr, rest)) => {
            let (filter, after) = rest.split_once(']').ok_or_else(bad)?;
            let mut parts = filter.trim().splitn(3, ' ');
            let (sub, eq, val) = (parts.next(), parts.next(), parts.next());
            let (Some(sub), Some(eq), Some(val)) = (sub, eq, val) else {
                return Err(bad());
            };
            if !eq.eq_ignore_ascii_case("eq") {
                return Err(format!("path `{path}`: only eq filters are supported"));
            }
            let val = val
                .trim()
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .ok_or_else(bad)?;
            let rest = after.strip_prefix('.').filter(|r| !r.is_empty());
            Ok((attr, Some((sub.to_string(), val.to_string())), rest))
        }
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.get("value"), b.get("value")) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn at_path(
    resource: &mut Map<String, Value>,
    op: &str,
    path: &str,
    value: Option<Value>,
) -> Result<(), String> {
    let (attr, filter, sub) = parse_path(path)?;
    let attr = key(resource, attr);
    let need_value = || value.clone().ok_or(format!("{op} {path} needs a value"));
    match (filter, sub) {
        (None, None) => match op {
            "remove" => match (resource.get_mut(&attr), &value) {
                (Some(Value::Array(items)), Some(Value::Array(gone))) => {
                    items.retain(|i| !gone.iter().any(|g| same(i, g)));
                }
                _ => {
                    resource.remove(&attr);
                }
            },
            "add" => {
                let v = need_value()?;
                match (resource.get_mut(&attr), v) {
                    (Some(Value::Array(items)), Value::Array(more)) => {
                        for m in more {
                            if !items.iter().any(|i| same(i, &m)) {
                                items.push(m);
                            }
                        }
                    }
                    (_, v) => {
                        resource.insert(attr, v);
                    }
                }
            }
            _ => {
                resource.insert(attr, need_value()?);
            }
        },
        (None, Some(sub)) => {
            let inner = resource
                .entry(attr.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(inner) = inner else {
                return Err(format!("{attr} is not complex, so {path} cannot be set"));
            };
            let sub = key(inner, sub);
            if op == "remove" {
                inner.remove(&sub);
            } else {
                inner.insert(sub, need_value()?);
            }
        }
        (Some((fsub, fval)), sub) => {
            let items = resource
                .entry(attr.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(items) = items else {
                return Err(format!(
                    "{attr} is not multi-valued, so {path} cannot be filtered"
                ));
            };
            let matches = |i: &Value| {
                i.as_object()
                    .and_then(|o| o.get(&key(o, &fsub)))
                    .and_then(Value::as_str)
                    .is_some_and(|v| v.eq_ignore_ascii_case(&fval))
            };
            match (op, sub) {
                ("remove", None) => items.retain(|i| !matches(i)),
                ("remove", Some(sub)) => {
                    for i in items.iter_mut().filter(|i| matches(i)) {
                        if let Value::Object(o) = i {
                            let k = key(o, sub);
                            o.remove(&k);
                        }
                    }
                }
                (_, Some(sub)) => {
                    let v = need_value()?;
                    let mut found = false;
                    for i in items.iter_mut().filter(|i| matches(i)) {
                        if let Value::Object(o) = i {
                            let k = key(o, sub);
                            o.insert(k, v.clone());
                            found = true;
                        }
                    }
                    if !found {
                        let mut o = Map::new();
                        o.insert(fsub.clone(), Value::String(fval.clone()));
                        o.insert(sub.to_string(), v);
                        items.push(Value::Object(o));
                    }
                }
                (_, None) => {
                    let v = need_value()?;
                    items.retain(|i| !matches(i));
                    items.push(v);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(resource: Value, ops: Value) -> Value {
        let mut r = resource.as_object().unwrap().clone();
        apply(
            &mut r,
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops}),
        )
        .unwrap();
        Value::Object(r)
    }

    #[test]
    fn okta_and_entra_patches() {
        // Okta deactivates with a value object and no path.
        let r = patched(
            json!({"userName": "a", "active": true}),
            json!([{"op": "replace", "value": {"active": false}}]),
        );
        assert_eq!(r["active"], false);
        // Entra: capitalised ops, string booleans, sub-attributes and filtered paths.
        let r = patched(
            json!({"userName": "a", "emails": [{"type": "work", "value": "old@x", "primary": true}]}),
            json!([
                {"op": "Replace", "path": "active", "value": "False"},
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "new@x"},
                {"op": "Add", "path": "name.givenName", "value": "Al"},
            ]),
        );
        assert_eq!(r["active"], "False");
        assert_eq!(r["emails"][0]["value"], "new@x");
        assert_eq!(r["emails"][0]["primary"], true);
        assert_eq!(r["name"]["givenName"], "Al");
        // Members: add (never twice), remove by filter, remove by value list.
        let r = patched(
            json!({"displayName": "g", "members": [{"value": "1"}]}),
            json!([
                {"op": "Add", "path": "members", "value": [{"value": "1"}, {"value": "2"}, {"value": "3"}]},
                {"op": "Remove", "path": "members[value eq \"2\"]"},
                {"op": "remove", "path": "members", "value": [{"value": "3"}]},
            ]),
        );
        assert_eq!(r["members"], json!([{"value": "1"}]));
    }

    #[test]
    fn malformed_patches_are_refused() {
        let mut r = Map::new();
        for bad in [
            json!({"Operations": []}),
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"]}),
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "move", "path": "a"}]}),
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "add", "path": "members[value ne \"1\"]", "value": {}}]}),
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "value": 3}]}),
        ] {
            assert!(apply(&mut r, &bad).is_err(), "{bad}");
        }
    }
}

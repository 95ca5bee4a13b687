//! A JSON Schema check for answers against an OpenAPI 3.1 document: the
//! keywords our documents use (`$ref` within the document, `type` with
//! `null`, `properties`, `required`, `additionalProperties`, `items`,
//! `enum`, `const`, `allOf`, `anyOf`, `oneOf`). Formats, patterns and
//! bounds are documentation only here.

use serde_json::Value;

/// Checks `value` against `schema`; returns what is wrong, by JSON path.
pub fn check(doc: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    walk(doc, schema, value, "$", &mut errors, 0);
    errors
}

/// Resolves a local `$ref` (`#/components/...`).
pub fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    let mut s = schema;
    for _ in 0..32 {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => match r.strip_prefix('#').and_then(|p| doc.pointer(p)) {
                Some(target) => s = target,
                None => return &Value::Null,
            },
            None => return s,
        }
    }
    s
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        _ => false,
    }
}

fn walk(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>, depth: u32) {
    if depth > 64 {
        errors.push(format!("{at}: schema nests too deep"));
        return;
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = resolve(doc, schema);
        if target.is_null() {
            errors.push(format!("{at}: unresolved $ref {r}"));
            return;
        }
        return walk(doc, target, v, at, errors, depth + 1);
    }
    let sub = |s: &Value| {
        let mut e = Vec::new();
        walk(doc, s, v, at, &mut e, depth + 1);
        e
    };
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            errors.extend(sub(s));
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|s| sub(s).is_empty())
    {
        errors.push(format!("{at}: matches none of anyOf: {v}"));
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let n = one.iter().filter(|s| sub(s).is_empty()).count();
        if n != 1 {
            errors.push(format!(
                "{at}: matches {n} of oneOf (exactly one needed): {v}"
            ));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        errors.push(format!("{at}: {v} is not one of {options:?}"));
    }
    if let Some(c) = schema.get("const")
        && c != v
    {
        errors.push(format!("{at}: {v} is not {c}"));
    }
    match schema.get("type") {
        Some(Value::String(t)) if !type_matches(t, v) => {
            errors.push(format!("{at}: {v} is not of type {t}"));
            return;
        }
        Some(Value::Array(ts))
            if !ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, v)) =>
        {
            errors.push(format!("{at}: {v} is not of type {ts:?}"));
            return;
        }
        _ => {}
    }
    if let Value::Object(obj) = v {
        let props = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    errors.push(format!("{at}: required field {r:?} missing"));
                }
            }
        }
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => walk(doc, s, val, &format!("{at}.{k}"), errors, depth + 1),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{at}: undocumented field {k:?}"));
                    }
                    Some(s @ Value::Object(_)) => {
                        walk(doc, s, val, &format!("{at}.{k}"), errors, depth + 1)
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (v, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            walk(doc, s, item, &format!("{at}[{i}]"), errors, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_check_finds_what_is_wrong() {
        let doc = json!({"components": {"schemas": {"P": {
            "type": "object", "required": ["id"], "additionalProperties": false,
            "properties": {"id": {"type": "string"}, "n": {"type": ["integer", "null"]},
                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}}}
        }}}});
        let s = json!({"$ref": "#/components/schemas/P"});
        assert!(check(&doc, &s, &json!({"id": "x", "n": null, "tags": ["a"]})).is_empty());
        assert_eq!(check(&doc, &s, &json!({"n": 1})).len(), 1, "missing id");
        assert_eq!(check(&doc, &s, &json!({"id": 1})).len(), 1, "wrong type");
        assert_eq!(check(&doc, &s, &json!({"id": "x", "extra": 1})).len(), 1);
        assert_eq!(check(&doc, &s, &json!({"id": "x", "tags": ["c"]})).len(), 1);
        assert_eq!(check(&doc, &s, &json!({"id": "x", "n": 1.5})).len(), 1);
        let one = json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
        assert!(check(&doc, &one, &json!(3)).is_empty());
        assert_eq!(check(&doc, &one, &json!(true)).len(), 1);
        assert_eq!(check(&doc, &json!({"$ref": "#/nope"}), &json!(1)).len(), 1);
    }
}

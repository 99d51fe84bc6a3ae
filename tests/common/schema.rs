//! Validates JSON against a schema of the Vision API's OpenAPI file (the subset of JSON Schema it
//! uses: $ref, allOf, oneOf, type, properties, required, items, enum, minimum/maximum and its
//! array item counts written as minLength/maxLength).

use serde_json::Value;

pub struct OpenApi(Value);

impl OpenApi {
    pub fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/visionapi-swagger.json");
        Self(serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
    }

    /// The first violation, with its JSON path.
    pub fn validate(&self, schema: &str, value: &Value) -> Result<(), String> {
        let s = &self.0["components"]["schemas"][schema];
        assert!(!s.is_null(), "no schema {schema}");
        self.check(s, value, "$")
    }

    pub fn assert_valid(&self, schema: &str, value: &Value) {
        if let Err(e) = self.validate(schema, value) {
            panic!("{schema}: {e}\nvalue: {value}");
        }
    }

    fn resolve<'a>(&'a self, s: &'a Value) -> &'a Value {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap();
                self.resolve(&self.0["components"]["schemas"][name])
            }
            None => s,
        }
    }

    fn check(&self, s: &Value, v: &Value, at: &str) -> Result<(), String> {
        let s = self.resolve(s);
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            for sub in all {
                self.check(sub, v, at)?;
            }
        }
        if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
            let ok = one.iter().filter(|sub| self.check(sub, v, at).is_ok()).count();
            if ok != 1 {
                return Err(format!("{at}: matches {ok} of the oneOf schemas"));
            }
        }
        if let Some(t) = s.get("type").and_then(Value::as_str) {
            let ok = match t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "string" => v.is_string(),
                "boolean" => v.is_boolean(),
                _ => true,
            };
            if !ok {
                return Err(format!("{at}: expected {t}, got {v}"));
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array)
            && !e.contains(v)
        {
            return Err(format!("{at}: {v} not in {e:?}"));
        }
        if let Some(n) = v.as_f64() {
            if s.get("minimum").and_then(Value::as_f64).is_some_and(|m| n < m) {
                return Err(format!("{at}: {n} below minimum"));
            }
            if s.get("maximum").and_then(Value::as_f64).is_some_and(|m| n > m) {
                return Err(format!("{at}: {n} above maximum"));
            }
        }
        if let Some(a) = v.as_array() {
            for (k, key) in [("minLength", true), ("minItems", true), ("maxLength", false), ("maxItems", false)] {
                if let Some(m) = s.get(k).and_then(Value::as_u64) {
                    let bad = if key { (a.len() as u64) < m } else { (a.len() as u64) > m };
                    if bad {
                        return Err(format!("{at}: {} items violates {k} {m}", a.len()));
                    }
                }
            }
            if let Some(items) = s.get("items") {
                for (i, item) in a.iter().enumerate() {
                    self.check(items, item, &format!("{at}[{i}]"))?;
                }
            }
        }
        if let Some(o) = v.as_object() {
            for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
                let r = r.as_str().unwrap();
                if !o.contains_key(r) {
                    return Err(format!("{at}: missing required `{r}`"));
                }
            }
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    if let Some(x) = o.get(k) {
                        self.check(sub, x, &format!("{at}.{k}"))?;
                    }
                }
            }
        }
        Ok(())
    }
}

//! A request body kept exactly as the client wrote it: top-level fields in their order, each
//! value's bytes untouched. A gateway forwards it so fields seedbed does not know reach the
//! provider byte for byte; only the fields it must change (`model`, `stream`) are replaced.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    fields: Vec<(String, Box<RawValue>)>,
}

impl RawRequest {
    /// A JSON object body; `None` for anything else.
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// The first top-level key that appears twice. Such a body must be refused: a parser that
    /// keeps the first value and one that keeps the last would disagree about the request
    /// (`"n":15,"n":1` checked as 1 but relayed as 15).
    pub fn duplicate_key(&self) -> Option<&str> {
        let mut seen = std::collections::HashSet::with_capacity(self.fields.len());
        self.fields
            .iter()
            .map(|(key, _)| key.as_str())
            .find(|key| !seen.insert(*key))
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// Replace (in place) or append a field.
    pub fn set(&mut self, key: &str, value: &impl Serialize) {
        let Ok(json) = serde_json::to_string(value) else {
            return;
        };
        let Ok(raw) = RawValue::from_string(json) else {
            return;
        };
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some((_, slot)) => *slot = raw,
            None => self.fields.push((key.to_string(), raw)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.fields.retain(|(k, _)| k != key);
    }

    /// A field decoded, `None` when absent, `null` or of another type.
    pub fn value<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Option<T> {
        serde_json::from_str(self.get(key)?.get()).ok()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Serialize for RawRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len()))?;
        for (key, value) in &self.fields {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for RawRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = RawRequest;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRequest, A::Error> {
                let mut fields = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push((key, value));
                }
                Ok(RawRequest { fields })
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

#[cfg(test)]
mod tests {
    use super::RawRequest;

    #[test]
    fn unknown_fields_keep_their_bytes_and_order() {
        let body =
            br#"{"model":"a","x_future":{"b":1.50,"a":[1e3, "\u00e9"]},"stream":false,"n":null}"#;
        let mut raw = RawRequest::parse(body).unwrap();
        raw.set("model", &"upstream-model");
        raw.set("stream", &true);
        assert_eq!(
            String::from_utf8(raw.to_bytes()).unwrap(),
            r#"{"model":"upstream-model","x_future":{"b":1.50,"a":[1e3, "\u00e9"]},"stream":true,"n":null}"#
        );
        assert_eq!(
            raw.value::<String>("model").as_deref(),
            Some("upstream-model")
        );
        assert_eq!(raw.value::<u32>("n"), None);
        assert!(RawRequest::parse(b"[1]").is_none());
        assert_eq!(raw.duplicate_key(), None);
        let twice = RawRequest::parse(br#"{"n":15,"prompt":"x","n":1}"#).unwrap();
        assert_eq!(twice.duplicate_key(), Some("n"));
    }
}

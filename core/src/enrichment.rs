//! Reference data about entity keys (`spec.enrichment`): key -> attributes (`site`, `owner`,
//! ...), shared between the engine (alert templates, CEL) and whatever keeps it current (the
//! detector reloads the file when it changes). A key the data does not list gets the declared
//! default attributes: a labelled default, never a failure.
//!
//! File format: a YAML (or JSON) map from entity key to a map of attribute name to value;
//! scalar values (strings, numbers, booleans) are taken as their text.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// The attributes of one key.
pub type Attributes = Arc<BTreeMap<String, String>>;

/// The reference data of a pipeline; replaced as a whole on reload.
#[derive(Debug)]
pub struct ReferenceData {
    entries: RwLock<Arc<HashMap<String, Attributes>>>,
    default: Attributes,
}

/// Parses a reference data file.
///
/// # Errors
/// What does not parse, naming the key.
pub fn parse(bytes: &[u8]) -> Result<HashMap<String, Attributes>, String> {
    let raw: BTreeMap<String, BTreeMap<String, serde_norway::Value>> =
        serde_norway::from_slice(bytes)
            .map_err(|e| format!("not a map of entity key to a map of attributes: {e}"))?;
    let mut out = HashMap::with_capacity(raw.len());
    for (key, attrs) in raw {
        let m = texts(&key, attrs)?;
        out.insert(key, Arc::new(m));
    }
    Ok(out)
}

/// Parses one key's attributes: a record value of a reference data topic, a JSON (or YAML) map
/// of attribute name to value.
///
/// # Errors
/// What does not parse, naming the key.
pub fn parse_attributes(key: &str, bytes: &[u8]) -> Result<Attributes, String> {
    let raw: BTreeMap<String, serde_norway::Value> = serde_norway::from_slice(bytes)
        .map_err(|e| format!("key `{key}`: not a map of attribute name to value: {e}"))?;
    Ok(Arc::new(texts(key, raw)?))
}

/// Attribute values as text: strings, numbers, booleans (null: empty).
fn texts(
    key: &str,
    attrs: BTreeMap<String, serde_norway::Value>,
) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    for (name, v) in attrs {
        let text = match v {
            serde_norway::Value::String(s) => s,
            serde_norway::Value::Number(n) => n.to_string(),
            serde_norway::Value::Bool(b) => b.to_string(),
            serde_norway::Value::Null => String::new(),
            _ => {
                return Err(format!(
                    "key `{key}`, attribute `{name}`: a value must be a string, number or boolean"
                ));
            }
        };
        m.insert(name, text);
    }
    Ok(m)
}

impl ReferenceData {
    /// Reference data with `entries` and the `default` attributes of unlisted keys.
    pub fn new(entries: HashMap<String, Attributes>, default: BTreeMap<String, String>) -> Self {
        Self {
            entries: RwLock::new(Arc::new(entries)),
            default: Arc::new(default),
        }
    }

    /// The attributes of `key` (the default ones when it is not listed).
    pub fn lookup(&self, key: &str) -> Attributes {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(key)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }

    /// Replaces every entry (a reload).
    pub fn replace(&self, entries: HashMap<String, Attributes>) {
        *self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(entries);
    }

    /// Applies changes of single keys (a reference data topic's records): `Some` sets a key's
    /// attributes, `None` (a tombstone) removes the key.
    pub fn apply(&self, changes: impl IntoIterator<Item = (String, Option<Attributes>)>) {
        let mut guard = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entries = Arc::make_mut(&mut guard);
        for (k, v) in changes {
            match v {
                Some(a) => {
                    entries.insert(k, a);
                }
                None => {
                    entries.remove(&k);
                }
            }
        }
    }

    /// Number of keys listed.
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no key is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_parse_and_missing_keys_get_the_default() {
        let m = parse(b"pump-1: {site: berlin, floor: 2, critical: true}\npump-2: {site: paris}\n")
            .unwrap();
        let r = ReferenceData::new(m, BTreeMap::from([("site".into(), "unknown".into())]));
        assert_eq!(r.lookup("pump-1")["floor"], "2");
        assert_eq!(r.lookup("pump-1")["critical"], "true");
        assert_eq!(r.lookup("pump-9")["site"], "unknown");
        r.replace(parse(b"{\"pump-9\": {\"site\": \"rome\"}}").unwrap());
        assert_eq!(r.lookup("pump-9")["site"], "rome");
        assert_eq!(r.len(), 1);
        let e = parse(b"pump-1: {site: [a, b]}").unwrap_err();
        assert!(e.contains("key `pump-1`, attribute `site`"), "{e}");
        assert!(parse(b"- a\n- b\n").is_err());
        r.apply([
            (
                "pump-1".into(),
                Some(parse_attributes("pump-1", br#"{"site":"oslo","n":3}"#).unwrap()),
            ),
            ("pump-9".into(), None),
        ]);
        assert_eq!(r.lookup("pump-1")["n"], "3");
        assert_eq!(r.lookup("pump-9")["site"], "unknown");
        assert!(
            parse_attributes("k", b"[1]")
                .unwrap_err()
                .starts_with("key `k`")
        );
    }
}

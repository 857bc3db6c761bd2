//! Reading fields out of decoded Avro records (`apache_avro::types::Value`), with errors that
//! name the field: shared by the loon manifest and the snapshot manifest decoders.

use apache_avro::types::Value;

pub fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    match v {
        Value::Record(fields) => fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("the record has no `{name}`")),
        _ => Err(format!("expected a record holding `{name}`")),
    }
}

pub fn array(v: &Value) -> Result<&[Value], String> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(format!("expected an array, found {other:?}")),
    }
}

pub fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, found {other:?}")),
    }
}

pub fn long(v: &Value) -> Result<i64, String> {
    match v {
        Value::Long(l) => Ok(*l),
        Value::Int(i) => Ok(*i as i64),
        other => Err(format!("expected a long, found {other:?}")),
    }
}

//! `tojson` as transformers defines it (Python's `json.dumps`), for chat templates: its indent is
//! bounded and the text it makes is paid for with the render's fuel.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{ErrorKind, State};
use serde_json::Value as Json;

/// The widest `indent` a template may ask `tojson` for.
const MAX_INDENT: usize = 16;

/// The deepest nesting `tojson` writes (a template can build lists nested without bound).
const MAX_DEPTH: usize = 64;

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False)` with
/// optional `indent`, keys in their order, no HTML escaping.
pub(super) fn tojson(
    state: &State,
    value: Value,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    if indent.is_some_and(|n| n > MAX_INDENT) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent is at most {MAX_INDENT}"),
        ));
    }
    // Accepted as transformers' `tojson` accepts them; the output is the same for chat prompts.
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_python_json(state, &value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// Writes `v` as Python's `json.dumps` does: `", "` and `": "` separators without indent.
fn write_python_json(
    state: &State,
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), minijinja::Error> {
    if depth > MAX_DEPTH {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: values nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    // Every item pays for what it writes (a fuel per 64 bytes), as the render's own output does.
    let newline = |out: &mut String, depth: usize| {
        let width = indent.map_or(0, |n| n * depth);
        state.consume_fuel(1 + width as u64 / 64)?;
        if indent.is_some() {
            out.push('\n');
            out.push_str(&" ".repeat(width));
        }
        Ok::<(), minijinja::Error>(())
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    let quote = |s: &str| Json::String(s.to_string()).to_string();
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match (i64::try_from(v.clone()), f64::try_from(v.clone())) {
            (Ok(i), _) if !v.to_string().contains('.') => out.push_str(&i.to_string()),
            (_, Ok(f)) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 => {
                out.push_str(&format!("{f:.1}"))
            }
            (_, Ok(f)) if f.is_finite() => out.push_str(&f.to_string()),
            _ => out.push_str(&v.to_string()),
        },
        ValueKind::String => {
            let text = v.as_str().unwrap_or_default();
            state.consume_fuel(1 + text.len() as u64 / 64)?;
            out.push_str(&quote(text))
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1)?;
                out.push_str(&quote(&key.to_string()));
                out.push_str(": ");
                write_python_json(state, &v.get_item(key)?, indent, depth + 1, out)?;
            }
            newline(out, depth)?;
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1)?;
                write_python_json(state, item, indent, depth + 1, out)?;
            }
            newline(out, depth)?;
            out.push(']');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot convert {} to JSON", v.kind()),
            ))
        }
    }
    Ok(())
}

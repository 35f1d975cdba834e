//! Server-sent events framing: `data: <json>` events and the final `data: [DONE]`.

use actix_web::web::Bytes;
use serde_json::Value;

/// One `data:` event carrying a JSON value.
pub fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// The event that ends an OpenAI stream.
pub fn done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_single_data_lines_ended_by_a_blank_line() {
        let e = event(&serde_json::json!({"text": "a\nb"}));
        assert_eq!(&e[..], b"data: {\"text\":\"a\\nb\"}\n\n");
        assert_eq!(&done()[..], b"data: [DONE]\n\n");
    }
}

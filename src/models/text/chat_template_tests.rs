//! Tests of chat templates: rendering as transformers does, Python-compatible JSON, and errors.

use super::*;
use serde_json::json;

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[test]
fn renders_chatml_with_generation_prompt() {
    let t = ChatTemplate::new(CHATML, "<s>", "</s>").unwrap();
    let text = t.render(&[ChatMessage::new("user", "hi")], true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn trims_blocks_and_python_methods_work() {
    let src = "{% for m in messages %}\n  {% if m.content.strip().startswith('x') %}X{% else %}{{ m.content.upper() }}{% endif %}\n{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let text = t
        .render(
            &[
                ChatMessage::new("user", " xa"),
                ChatMessage::new("user", "b"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(text, "XB");
}

#[test]
fn raise_exception_is_a_refusal_with_its_message() {
    let src = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let err = t
        .render(&[ChatMessage::new("system", "s")], true)
        .unwrap_err();
    assert!(
        matches!(&err, ChatTemplateError::Refused(m) if m.contains("Conversation must start with user")),
        "{err}"
    );
}

#[test]
fn bad_syntax_and_bad_messages_are_typed_errors() {
    assert!(matches!(
        ChatTemplate::new("{% for %}", "", ""),
        Err(ChatTemplateError::Syntax(_))
    ));
    let t = ChatTemplate::new(CHATML, "", "").unwrap();
    assert!(matches!(
        t.render(&[ChatMessage::new("wizard", "x")], true),
        Err(ChatTemplateError::InvalidMessage { index: 0, .. })
    ));
    assert!(matches!(
        t.render(&[], true),
        Err(ChatTemplateError::NoMessages)
    ));
    assert!(ChatMessage::from_openai(1, &json!({"role": "user", "content": 5})).is_err());
    assert!(ChatMessage::from_openai(0, &json!({"role": "user"})).is_err());
    assert!(ChatMessage::from_openai(
        0,
        &json!({"role": "user", "content": [{"type": "image_url", "image_url": {}}]})
    )
    .is_err());
}

#[test]
fn openai_text_parts_are_flattened() {
    let m = ChatMessage::from_openai(
        0,
        &json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
    )
    .unwrap();
    assert_eq!(m, ChatMessage::new("user", "a\nb"));
}

#[test]
fn tojson_is_pythons_json_dumps() {
    let t = ChatTemplate::new(
        "{{ {'b': [1, 'é<', 2.0, true], 'a': none} | tojson }}|{{ [] | tojson(indent=2) }}",
        "",
        "",
    )
    .unwrap();
    assert_eq!(
        t.render(&[ChatMessage::new("user", "")], false).unwrap(),
        r#"{"b": [1, "é<", 2.0, true], "a": null}|[]"#
    );
}

#[test]
fn named_templates_use_default() {
    let config = json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
    assert_eq!(template_in_config(&config), Ok(Some("D".into())));
    assert_eq!(template_in_config(&json!({})), Ok(None));
    assert_eq!(
        special_token(Some(&json!({"content": "<s>", "lstrip": false}))),
        Some("<s>".into())
    );
}

#[test]
fn template_kwargs_reach_the_template_and_cannot_replace_its_variables() {
    let src = "{{ messages[0].content }}{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{% if add_generation_prompt %}>{% endif %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let user = [ChatMessage::new("user", "hi")];
    let kwargs = |v: serde_json::Value| v.as_object().unwrap().clone();
    let render = |k: &serde_json::Value, generation| {
        t.render_with(&user, generation, &kwargs(k.clone()), MAX_RENDERED_BYTES)
            .unwrap()
    };
    assert_eq!(render(&json!({}), true), "hi>");
    assert_eq!(
        render(&json!({"enable_thinking": false}), true),
        "hi<think></think>>"
    );
    assert_eq!(render(&json!({"enable_thinking": true}), false), "hi");
    let hijack =
        json!({"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": false});
    assert_eq!(render(&hijack, true), "hi>");
}

#[test]
fn developer_is_read_as_system() {
    let m = ChatMessage::from_openai(0, &json!({"role": "developer", "content": "d"})).unwrap();
    assert_eq!(m, ChatMessage::new("system", "d"));
}

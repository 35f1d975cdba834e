//! What vLLM's clients send, over real HTTP against the bundled fixtures: `prompt` as a list
//! (strings or token-id lists; one choice per prompt and sample, each as the prompt alone would
//! get, plain and streamed), vLLM's sampling extras (`top_k`, `min_p`, `repetition_penalty`,
//! `min_tokens`, `stop_token_ids`, `include_stop_str_in_output`, `skip_special_tokens`) with their
//! no-op values accepted and bad values refused by name, `generation_config.json`'s sampling
//! defaults for what a request leaves unset, and chats with `chat_template_kwargs`,
//! `add_generation_prompt` and the `developer` role.

mod server_common;

use std::path::PathBuf;

use serde_json::{json, Value};
use server_common::{fixture, reference, scratch, EventStream, Server};

const OPT: &str = "tiny-opt-prenorm";
const QWEN3: &str = "tiny-qwen3";
/// The OPT tokenizer's `</s>`: its end-of-sequence id, a special token.
const OPT_EOS: u32 = 2;

/// A copy of fixture `name` in a scratch folder, with `generation_config.json` and
/// `chat_template.jinja` replaced when given.
fn fixture_copy(
    name: &str,
    test: &str,
    generation: Option<Value>,
    template: Option<&str>,
) -> PathBuf {
    let dir = scratch(test);
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    if let Some(generation) = generation {
        std::fs::write(dir.join("generation_config.json"), generation.to_string()).unwrap();
    }
    if let Some(template) = template {
        std::fs::write(dir.join("chat_template.jinja"), template).unwrap();
    }
    dir
}

/// Two CPU workers and these `(name, path)` models, the first attached at start.
fn config(models: &[(&str, PathBuf)]) -> String {
    let mut text =
        "[runtime]\nattach_timeout = \"60s\"\n\n[[workers]]\ndevice = \"cpu\"\ncount = 2\n\n"
            .to_string();
    for (i, (name, path)) in models.iter().enumerate() {
        text.push_str(&format!(
            "[[models]]\nname = \"{name}\"\npath = {:?}\nattach_on_start = {}\nkeep_alive = \"0s\"\n\n",
            path.display().to_string(),
            i == 0
        ));
    }
    text
}

/// A greedy completion of `prompt` on `model` with `more` fields set.
fn completion(model: &str, prompt: Value, more: Value) -> Value {
    let mut body = json!({"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0});
    for (k, v) in more.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn complete(server: &Server, body: &Value) -> Value {
    let reply = server.post("/v1/completions", body);
    assert_eq!(reply.status, 200, "{body}: {}", reply.body);
    reply.json()
}

fn text(reply: &Value, index: usize) -> String {
    reply["choices"][index]["text"].as_str().unwrap().to_owned()
}

fn usage(reply: &Value, field: &str) -> u64 {
    reply["usage"][field].as_u64().unwrap()
}

/// Asserts a 400 whose message names `field`.
fn refused(server: &Server, path: &str, body: &Value, field: &str) {
    let reply = server.post(path, body);
    reply.assert_error(400, "invalid_request");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains(field), "{body}: {message}");
}

#[test]
fn a_list_of_prompts_answers_each_as_alone_with_choice_index_prompt_times_n_plus_sample() {
    let server = Server::start("extras-prompts", &config(&[(OPT, fixture(OPT))]));
    let cases = reference(OPT);
    let prompts: Vec<&str> = cases.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(prompts.len(), 3);
    let alone: Vec<Value> = prompts
        .iter()
        .map(|p| complete(&server, &completion(OPT, json!(p), json!({}))))
        .collect();

    // Strings, then the same prompts as token ids: 6 choices, choice i*2+j is prompt i's.
    let ids: Vec<&Vec<u32>> = cases.iter().map(|c| &c.1).collect();
    for prompt in [json!(prompts), json!(ids)] {
        let batch = complete(&server, &completion(OPT, prompt.clone(), json!({"n": 2})));
        let choices = batch["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 6, "{batch}");
        for (index, choice) in choices.iter().enumerate() {
            assert_eq!(choice["index"], index);
            assert_eq!(
                text(&batch, index),
                text(&alone[index / 2], 0),
                "{prompt} {index}"
            );
            assert_eq!(
                choice["finish_reason"],
                alone[index / 2]["choices"][0]["finish_reason"]
            );
        }
        let sum = |field| alone.iter().map(|a| usage(a, field)).sum::<u64>();
        assert_eq!(
            usage(&batch, "prompt_tokens"),
            sum("prompt_tokens"),
            "each prompt once"
        );
        assert_eq!(
            usage(&batch, "completion_tokens"),
            2 * sum("completion_tokens")
        );
    }

    // Streamed: every chunk names its choice, each choice's text is the same, usage summed.
    let body = completion(
        OPT,
        json!(prompts),
        json!({"n": 2, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let (chunks, done) = EventStream::open(&server.addr, "/v1/completions", &body).collect();
    assert!(done);
    let mut texts = vec![String::new(); 6];
    let mut finished = vec![0; 6];
    for chunk in &chunks[..chunks.len() - 1] {
        let choice = &chunk["choices"][0];
        let index = choice["index"].as_u64().unwrap() as usize;
        texts[index].push_str(choice["text"].as_str().unwrap());
        finished[index] += usize::from(!choice["finish_reason"].is_null());
    }
    assert_eq!(finished, [1; 6]);
    for (index, streamed) in texts.iter().enumerate() {
        assert_eq!(
            streamed,
            &text(&alone[index / 2], 0),
            "streamed choice {index}"
        );
    }
    let last = chunks.last().unwrap();
    let sum = |field| alone.iter().map(|a| usage(a, field)).sum::<u64>();
    assert_eq!(usage(last, "prompt_tokens"), sum("prompt_tokens"));
    assert_eq!(
        usage(last, "completion_tokens"),
        2 * sum("completion_tokens")
    );

    // Echo puts each prompt before its own choices.
    let echoed = complete(
        &server,
        &completion(OPT, json!(prompts), json!({"echo": true, "max_tokens": 2})),
    );
    for (index, prompt) in prompts.iter().enumerate() {
        assert!(text(&echoed, index).starts_with(prompt), "{echoed}");
    }

    // Limits: at most 64 prompts, at most 128 sequences, no empty prompt list.
    refused(
        &server,
        "/v1/completions",
        &completion(OPT, json!(vec!["a"; 65]), json!({})),
        "64",
    );
    let many = completion(OPT, json!(vec!["a"; 9]), json!({"n": 16}));
    refused(&server, "/v1/completions", &many, "128");
    refused(
        &server,
        "/v1/completions",
        &completion(OPT, json!([]), json!({})),
        "`prompt`",
    );
    refused(
        &server,
        "/v1/completions",
        &completion(OPT, json!([[5], []]), json!({})),
        "`prompt`",
    );
}

#[test]
fn vllm_sampling_extras_do_what_vllm_does_and_bad_values_are_400_by_name() {
    let server = Server::start("extras-sampling", &config(&[(OPT, fixture(OPT))]));
    let prompt = json!("Beautiful is better than");
    let greedy = complete(
        &server,
        &completion(OPT, prompt.clone(), json!({"max_tokens": 24})),
    );
    let greedy_text = text(&greedy, 0);
    assert!(greedy_text.contains("Explicit"), "{greedy_text}");

    // The no-op values, and top_k 1 or min_p 1 at temperature 2, are greedy.
    for more in [
        json!({"top_k": -1, "min_p": 0, "repetition_penalty": 1, "min_tokens": 0,
               "stop_token_ids": [], "include_stop_str_in_output": false,
               "skip_special_tokens": true}),
        json!({"top_k": 0}),
        json!({"temperature": 2.0, "seed": 11, "top_k": 1}),
        json!({"temperature": 2.0, "seed": 11, "min_p": 1.0}),
    ] {
        let mut more = more;
        more["max_tokens"] = json!(24);
        let reply = complete(&server, &completion(OPT, prompt.clone(), more.clone()));
        assert_eq!(text(&reply, 0), greedy_text, "{more}");
    }
    // Sampling without them is not (so the checks above can fail).
    let sampled = complete(
        &server,
        &completion(
            OPT,
            prompt.clone(),
            json!({"temperature": 2.0, "seed": 11, "max_tokens": 24}),
        ),
    );
    assert_ne!(text(&sampled, 0), greedy_text);
    let penalised = complete(
        &server,
        &completion(
            OPT,
            prompt.clone(),
            json!({"repetition_penalty": 50.0, "max_tokens": 24}),
        ),
    );
    assert_ne!(
        text(&penalised, 0),
        greedy_text,
        "repetition_penalty changes the text"
    );

    // min_tokens: with `</s>` forced, generation ends at once, or after min_tokens.
    let forced_eos = json!({"logit_bias": {OPT_EOS.to_string(): 100}});
    let ended = complete(
        &server,
        &completion(OPT, prompt.clone(), forced_eos.clone()),
    );
    assert_eq!(
        (text(&ended, 0).as_str(), usage(&ended, "completion_tokens")),
        ("", 0)
    );
    let mut more = forced_eos.clone();
    more["min_tokens"] = json!(5);
    let at_least = complete(&server, &completion(OPT, prompt.clone(), more));
    assert_eq!(usage(&at_least, "completion_tokens"), 5, "{at_least}");
    assert_eq!(at_least["choices"][0]["finish_reason"], "stop");

    // include_stop_str_in_output with skip_special_tokens false shows the `</s>` that ended it.
    let mut more = forced_eos.clone();
    more["include_stop_str_in_output"] = json!(true);
    more["skip_special_tokens"] = json!(false);
    let shown = complete(&server, &completion(OPT, prompt.clone(), more.clone()));
    assert_eq!(text(&shown, 0), "</s>", "{shown}");
    more["skip_special_tokens"] = json!(true);
    let skipped = complete(&server, &completion(OPT, prompt.clone(), more));
    assert_eq!(text(&skipped, 0), "");

    // stop_token_ids: a token forced by logit_bias ends generation when it is a stop token.
    let token = reference(OPT)[0].1[2];
    let forced = json!({"logit_bias": {token.to_string(): 100}, "max_tokens": 4});
    let runs = complete(&server, &completion(OPT, prompt.clone(), forced.clone()));
    assert_eq!(usage(&runs, "completion_tokens"), 4);
    assert_eq!(runs["choices"][0]["finish_reason"], "length");
    let mut more = forced.clone();
    more["stop_token_ids"] = json!([token]);
    let stopped = complete(&server, &completion(OPT, prompt.clone(), more.clone()));
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        (
            text(&stopped, 0).as_str(),
            usage(&stopped, "completion_tokens")
        ),
        ("", 0)
    );
    more["include_stop_str_in_output"] = json!(true);
    let kept = complete(&server, &completion(OPT, prompt.clone(), more));
    assert_eq!(usage(&kept, "completion_tokens"), 1);
    assert!(!text(&kept, 0).is_empty() && text(&runs, 0).starts_with(&text(&kept, 0)));

    // include_stop_str_in_output keeps the stop string, plain and streamed.
    let before = &greedy_text[..greedy_text.find("Explicit").unwrap()];
    let stop = json!({"stop": ["Explicit"], "max_tokens": 24});
    let cut = complete(&server, &completion(OPT, prompt.clone(), stop.clone()));
    assert_eq!(text(&cut, 0), before);
    let mut more = stop.clone();
    more["include_stop_str_in_output"] = json!(true);
    let with_stop = complete(&server, &completion(OPT, prompt.clone(), more.clone()));
    assert_eq!(text(&with_stop, 0), format!("{before}Explicit"));
    more["stream"] = json!(true);
    let (chunks, _) = EventStream::open(
        &server.addr,
        "/v1/completions",
        &completion(OPT, prompt.clone(), more),
    )
    .collect();
    assert_eq!(
        server_common::stream_text(&chunks),
        format!("{before}Explicit")
    );

    // Out of range: a 400 naming the field, on both endpoints.
    for (field, value) in [
        ("top_k", json!(-2)),
        ("min_p", json!(1.5)),
        ("min_p", json!(-0.5)),
        ("repetition_penalty", json!(0)),
        ("repetition_penalty", json!(-1)),
        ("min_tokens", json!(17)),
        ("stop_token_ids", json!([1_000_000])),
    ] {
        let body = completion(OPT, prompt.clone(), json!({ field: value }));
        refused(&server, "/v1/completions", &body, field);
    }
    // Still unsupported: named.
    for (field, value) in [("guided_json", json!({})), ("suffix", json!("x"))] {
        let body = completion(OPT, prompt.clone(), json!({ field: value }));
        refused(&server, "/v1/completions", &body, field);
    }
}

#[test]
fn generation_config_sampling_defaults_apply_only_where_the_request_leaves_them_unset() {
    let config_with = |test: &str, generation: Value| {
        let mut generation = generation;
        generation["eos_token_id"] = json!(OPT_EOS);
        fixture_copy(OPT, test, Some(generation), None)
    };
    let top_k_one = config_with("extras-genconfig-topk", json!({"top_k": 1}));
    let hot = config_with("extras-genconfig-hot", json!({"temperature": 2.0}));
    let server = Server::start(
        "extras-genconfig",
        &config(&[(OPT, fixture(OPT)), ("topk1", top_k_one), ("hot", hot)]),
    );
    let prompt = json!("Errors should never");
    // `more` on top of a seeded greedy request; a field `more` sets to null is left out.
    let sample = |model: &str, more: Value| {
        let mut body = completion(model, prompt.clone(), json!({"seed": 5}));
        for (k, v) in more.as_object().unwrap() {
            match v.is_null() {
                true => body.as_object_mut().unwrap().remove(k),
                false => body.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        text(&complete(&server, &body), 0)
    };
    let greedy = sample(OPT, json!({}));
    let sampled = sample(OPT, json!({"temperature": 2.0}));
    assert_ne!(
        sampled, greedy,
        "sampling at temperature 2 differs from greedy"
    );
    // top_k 1 from the model's generation config: greedy, unless the request sets top_k.
    assert_eq!(sample("topk1", json!({"temperature": 2.0})), greedy);
    assert_eq!(
        sample("topk1", json!({"temperature": 2.0, "top_k": -1})),
        sampled
    );
    // temperature 2 from the model's generation config when the request sets none.
    assert_eq!(sample("hot", json!({"temperature": null})), sampled);
    assert_eq!(sample("hot", json!({"temperature": 0})), greedy);
    // Without a generation config that sets it, an unset temperature is OpenAI's 1 (this
    // model's distribution is sharp: at 1 it still says what greedy says).
    assert_eq!(sample(OPT, json!({"temperature": null})), greedy);
}

/// tiny-qwen3's template with Qwen3's own `enable_thinking` switch.
const THINKING_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}";

#[test]
fn chats_take_template_kwargs_add_generation_prompt_developer_and_the_extras() {
    let thinking = fixture_copy(QWEN3, "extras-chat-model", None, Some(THINKING_TEMPLATE));
    let server = Server::start("extras-chat", &config(&[("qwen3", thinking)]));
    let chat = |messages: Value, more: Value| {
        let mut body = json!({"model": "qwen3", "messages": messages, "max_tokens": 8,
                              "temperature": 0, "ignore_eos": true});
        for (k, v) in more.as_object().unwrap() {
            body[k] = v.clone();
        }
        let reply = server.post("/v1/chat/completions", &body);
        assert_eq!(reply.status, 200, "{body}: {}", reply.body);
        reply.json()
    };
    let content = |r: &Value| {
        r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let user = json!([{"role": "user", "content": "Errors should never"}]);
    let plain = chat(user.clone(), json!({}));

    // The template sees enable_thinking: the prompt grows by the empty think block.
    let no_thinking = chat(
        user.clone(),
        json!({"chat_template_kwargs": {"enable_thinking": false}}),
    );
    assert!(usage(&no_thinking, "prompt_tokens") > usage(&plain, "prompt_tokens"));
    let thinking = chat(
        user.clone(),
        json!({"chat_template_kwargs": {"enable_thinking": true}}),
    );
    assert_eq!(
        usage(&thinking, "prompt_tokens"),
        usage(&plain, "prompt_tokens")
    );
    assert_eq!(content(&thinking), content(&plain));

    // add_generation_prompt false leaves the assistant's header out.
    let bare = chat(user.clone(), json!({"add_generation_prompt": false}));
    assert!(usage(&bare, "prompt_tokens") < usage(&plain, "prompt_tokens"));

    // developer is system.
    let as_system = chat(
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
        json!({}),
    );
    let as_developer = chat(
        json!([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
        json!({}),
    );
    assert_eq!(content(&as_developer), content(&as_system));
    assert_eq!(
        usage(&as_developer, "prompt_tokens"),
        usage(&as_system, "prompt_tokens")
    );

    // The extras work on chats: top_k 1 is greedy, min_tokens holds generation past `<|im_end|>`.
    let top_k = chat(
        user.clone(),
        json!({"temperature": 2.0, "seed": 3, "top_k": 1}),
    );
    assert_eq!(content(&top_k), content(&plain));
    let eos = json!({"3": 100});
    let ended = chat(
        user.clone(),
        json!({"ignore_eos": false, "logit_bias": eos}),
    );
    assert_eq!(usage(&ended, "completion_tokens"), 0);
    let held = chat(
        user.clone(),
        json!({"ignore_eos": false, "logit_bias": eos, "min_tokens": 3}),
    );
    assert_eq!(usage(&held, "completion_tokens"), 3);

    // Refusals name the field.
    let body = |more: Value| {
        let mut b = json!({"model": "qwen3", "messages": user});
        for (k, v) in more.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (field, value) in [
        ("chat_template_kwargs", json!(["enable_thinking"])),
        ("top_k", json!(-3)),
        ("min_p", json!(2)),
        ("repetition_penalty", json!(0)),
    ] {
        refused(
            &server,
            "/v1/chat/completions",
            &body(json!({ field: value })),
            field,
        );
    }
}

"""Drives `worker-controller serve` with the official `openai` Python client, as a user would:
chat completions plain and streamed (with usage), a plain completion, the model list, and the
typed error for a model without a chat template, chat logprobs, and a refused `n`. Run by tests/server_chat.rs:

    python openai_client.py BASE_URL CASES_JSON OPT_MODEL

CASES_JSON: [{"model", "messages", "reply", "prompt_tokens", "reply_tokens"}]. Prints `all ok`.
"""

import json
import sys

import openai


def main():
    base_url, cases, opt_model = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    for case in cases:
        model, messages, reply = case["model"], case["messages"], case["reply"]
        r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)
        assert r.object == "chat.completion", r
        assert r.model == model, r
        assert len(r.choices) == 1, r
        choice = r.choices[0]
        assert choice.message.role == "assistant", r
        assert choice.message.content == reply, (choice.message.content, reply)
        assert choice.finish_reason == "stop", r
        assert r.usage.prompt_tokens == case["prompt_tokens"], r.usage
        assert r.usage.completion_tokens == case["reply_tokens"], r.usage

        stream = client.chat.completions.create(
            model=model,
            messages=messages,
            temperature=0,
            max_completion_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        roles, parts, finishes, usage = [], [], [], None
        for chunk in stream:
            assert chunk.object == "chat.completion.chunk", chunk
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.role:
                    roles.append(c.delta.role)
                if c.delta.content:
                    parts.append(c.delta.content)
                if c.finish_reason:
                    finishes.append(c.finish_reason)
        assert roles == ["assistant"], roles
        assert "".join(parts) == reply, (parts, reply)
        assert finishes == ["stop"], finishes
        assert usage is not None and usage.completion_tokens == case["reply_tokens"], usage
        print(f"{model}: {reply!r} plain and streamed")

    c = client.completions.create(model=cases[0]["model"], prompt="Beautiful is", max_tokens=4, temperature=0)
    assert c.object == "text_completion" and isinstance(c.choices[0].text, str), c
    # A list of prompts, as LangChain's batch() sends them: a choice per prompt and sample, index
    # i*n + j, each as the prompt alone gives it.
    many = client.completions.create(
        model=cases[0]["model"], prompt=["Beautiful is", "Explicit is"], max_tokens=3, temperature=0, n=2
    )
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3], many
    alone = client.completions.create(model=cases[0]["model"], prompt="Explicit is", max_tokens=3, temperature=0)
    second = [c.text for c in many.choices if c.index in (2, 3)]
    assert second == [alone.choices[0].text] * 2, (many, alone)

    ids = {m.id: getattr(m, "state", None) for m in client.models.list()}
    for case in cases:
        assert case["model"] in ids, ids
    assert opt_model in ids, ids

    try:
        client.chat.completions.create(model=opt_model, messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("a model without a chat template answered")
    except openai.BadRequestError as e:
        assert "no chat template" in str(e), e

    r = client.chat.completions.create(
        model=cases[0]["model"], messages=cases[0]["messages"], max_tokens=4, temperature=0,
        logprobs=True, top_logprobs=2,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens, r
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content), content

    try:
        client.chat.completions.create(model=cases[0]["model"], messages=cases[0]["messages"], n=0)
        raise AssertionError("n=0 was accepted")
    except openai.BadRequestError as e:
        assert "n" in str(e), e
    print("all ok")


if __name__ == "__main__":
    main()

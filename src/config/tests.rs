//! Tests of the configuration: parsing, defaults, validation with file:line, and the bundled file.

use super::*;
use wc_actors::DeviceSpec;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        Path::new("test.toml"),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

#[test]
fn empty_file_gives_defaults_and_one_cpu_worker() {
    let config = parse("").unwrap();
    assert_eq!(config.server.port, 8000);
    let runtime = config.runtime_config();
    assert_eq!(runtime.workers.len(), 1);
    assert_eq!(runtime.workers[0].device, DeviceSpec::Cpu);
}

#[test]
fn the_bundled_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let config = Config::load(&path).unwrap();
    assert!(config.models.len() >= 2);
}

#[test]
fn unknown_keys_name_file_line_and_column() {
    let err = parse("[server]\nport = 1\nprot = 2\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.toml:3:1:"), "{err}");
    assert!(err.contains("prot"), "{err}");
}

#[test]
fn bad_values_are_rejected_with_their_line() {
    let err = parse("[[workers]]\ndevice = \"tpu\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.toml:2:"), "{err}");
    assert!(err.contains("unknown device"), "{err}");
    let err = parse("[[models]]\nname = \"a\"\npath = \"tests/fixtures/tiny-opt-prenorm\"\nkeep_alive = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.toml:4:"), "{err}");
}

#[test]
fn a_models_park_setting_reaches_its_spec_and_must_be_a_bool() {
    let model = "[[models]]\nname = \"a\"\npath = \"tests/fixtures/tiny-opt-prenorm\"\n";
    let park = |text: &str| {
        parse(&format!("{model}{text}")).unwrap().models[0]
            .spec()
            .park
    };
    assert_eq!(park(""), None, "unset: the worker's park_detached");
    assert_eq!(park("park = true\n"), Some(true));
    assert_eq!(park("park = false\n"), Some(false));
    let err = parse(&format!("{model}park = \"yes\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.toml:4:"), "{err}");
    let err = parse(&format!("{model}parked = true\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("test.toml:4:") && err.contains("parked"),
        "{err}"
    );
}

#[test]
fn missing_model_paths_point_at_the_path() {
    let err = parse("[[models]]\nname = \"a\"\npath = \"no/such/dir\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.toml:3:8:"), "{err}");
    assert!(err.contains("not a directory"), "{err}");
}

#[test]
fn durations_sizes_and_keep_alive_parse() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
    assert!(parse_duration("5 parsecs").is_err());
    assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
    assert_eq!(parse_bytes("2GB").unwrap(), 2_000_000_000);
    assert_eq!(KeepAlive::parse("-1").unwrap(), KeepAlive::Forever);
    assert_eq!(
        KeepAlive::parse("30s").unwrap(),
        KeepAlive::For(Duration::from_secs(30))
    );
    assert!(!KeepAlive::Forever.expired(Duration::MAX));
    assert_eq!(format_duration(Duration::from_secs(300)), "5m");
}

/// The line an error names, or a panic with the error.
fn error_line(text: &str) -> (usize, String) {
    let err = parse(text).unwrap_err();
    match &err {
        ConfigError::Invalid { line, .. } => (*line, err.to_string()),
        other => panic!("expected a file:line error, got {other}"),
    }
}

#[test]
fn huge_or_invalid_durations_are_line_errors_not_panics() {
    let model = "[[models]]\nname = \"m\"\nhub = \"a/b\"\n";
    for value in [
        "1e300",
        "nan",
        "inf",
        "-2",
        "\"-5m\"",
        "\"8761h\"",
        "31536001",
    ] {
        let (line, err) = error_line(&format!("{model}keep_alive = {value}\n"));
        assert_eq!(line, 4, "{value}: {err}");
    }
    assert_eq!(
        parse(&format!("{model}keep_alive = -1\n")).unwrap().models[0].keep_alive,
        KeepAlive::Forever
    );
    for (key, value) in [
        ("drain_delay", "1e300"),
        ("shutdown_deadline", "nan"),
        ("shutdown_deadline", "\"9000h\""),
        ("drain_delay", "-1"),
    ] {
        let (line, err) = error_line(&format!("[server]\n{key} = {value}\n"));
        assert_eq!(line, 2, "{key} = {value}: {err}");
    }
    let (line, err) = error_line("[runtime]\nattach_timeout = 1e300\n");
    assert_eq!(line, 2, "{err}");
    assert!(err.contains("out of range"), "{err}");
}

#[test]
fn tiny_bodies_too_many_workers_and_empty_keys_are_refused_with_their_line() {
    let (line, err) = error_line("[server]\nmax_body_bytes = \"0\"\n");
    assert_eq!(line, 2, "{err}");
    assert!(err.contains("at least 1024"), "{err}");
    assert!(parse("[server]\nmax_body_bytes = \"1KiB\"\n").is_ok());
    let (line, err) = error_line("[[workers]]\ndevice = \"cpu\"\ncount = 1000\n");
    assert_eq!(line, 3, "{err}");
    assert!(err.contains("1 to 64"), "{err}");
    let (line, _) = error_line("[[workers]]\ndevice = \"cpu\"\ncount = 0\n");
    assert_eq!(line, 3);
    let groups = "[[workers]]\ndevice = \"cpu\"\ncount = 40\n".repeat(2);
    let err = parse(&groups).unwrap_err().to_string();
    assert!(err.contains("80 workers in all"), "{err}");
    for key in ["\"\"", "\"  \""] {
        let (line, err) = error_line(&format!("[server]\nport = 1\napi_key = {key}\n"));
        assert_eq!(line, 3, "{err}");
        assert!(err.contains("API key is empty"), "{err}");
    }
}

#[test]
fn model_checkpoints_are_checked_at_load_with_their_line() {
    let dir = std::env::temp_dir().join(format!("wc-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::create_dir_all(dir.join("no-weights")).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-opt-prenorm");
    std::fs::copy(
        fixture.join("config.json"),
        dir.join("no-weights/config.json"),
    )
    .unwrap();
    let at = |text: &str| match Config::parse(text, Path::new("t.toml"), &dir) {
        Err(err @ ConfigError::Invalid { line, .. }) => (line, err.to_string()),
        other => panic!("expected a file:line error, got {other:?}"),
    };
    let (line, err) = at("[[models]]\nname = \"a\"\npath = \"empty\"\n");
    assert_eq!(line, 3, "{err}");
    assert!(err.contains("no config.json"), "{err}");
    // Not attached at start: the weights are looked at when it is first used.
    assert!(Config::parse(
        "[[models]]\nname = \"a\"\npath = \"no-weights\"\n",
        Path::new("t.toml"),
        &dir
    )
    .is_ok());
    let (line, err) =
        at("[[models]]\nname = \"a\"\npath = \"no-weights\"\nattach_on_start = true\n");
    assert_eq!(line, 3, "{err}");
    assert!(
        err.contains("attach_on_start") && err.contains("model.safetensors"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn more_models_attached_at_start_than_workers_is_refused_by_check() {
    let model = |name: &str| {
        format!(
            "[[models]]\nname = \"{name}\"\npath = \"tests/fixtures/tiny-opt-prenorm\"\n\
             attach_on_start = true\n"
        )
    };
    let one_worker = format!("[[workers]]\ndevice = \"cpu\"\ncount = 1\n{}", model("a"));
    assert!(parse(&one_worker).unwrap().check().is_ok());
    let mut config = parse(&format!("{one_worker}{}", model("b"))).unwrap();
    let err = config.check().unwrap_err();
    assert!(err.contains("2 models attach at start (a, b)"), "{err}");
    config.workers[0].count = 2;
    assert!(config.check().is_ok());
}

#[test]
fn the_bundled_config_says_the_code_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let file = Config::load(&path).unwrap();
    let code = Config::default();
    let server = |c: &Config| {
        let s = &c.server;
        format!(
            "{} {} {:?} {} {:?} {:?} {:?} {:?} {:?} {} {} {:?} {:?} {:?}",
            s.host,
            s.port,
            s.api_key,
            s.open_inference,
            s.model_roots,
            s.allowed_hosts,
            s.cors_allow_origins,
            s.client_request_timeout,
            s.max_body_bytes,
            s.max_tokens,
            s.default_max_tokens,
            s.shutdown_deadline,
            s.drain_delay,
            s.log_format
        )
    };
    assert_eq!(server(&file), server(&code), "[server]");
    let runtime = |c: &Config| format!("{:?}", c.runtime);
    assert_eq!(runtime(&file), runtime(&code), "[runtime]");
    assert_eq!(file.prewarm, code.prewarm, "[prewarm]");
}

#[test]
fn command_line_models_are_checked_like_file_entries() {
    let fixture = "tests/fixtures/tiny-opt-prenorm";
    let mut config = Config::default();
    let added = config.add_model(fixture, None, None, "--model").unwrap();
    assert_eq!(added.name(), "tiny-opt-prenorm");
    assert!(added.attach_on_start);
    assert_eq!(added.keep_alive, KeepAlive::Forever);
    assert!(
        Path::new(&added.resolved).is_absolute(),
        "{}",
        added.resolved
    );
    // The same directory under another name is fine; the same name twice is not.
    let added = config
        .add_model(
            &format!("{fixture}/"),
            Some("second"),
            Some(DType::F16),
            "--model",
        )
        .unwrap();
    assert_eq!(added.name(), "second");
    assert!(config.prewarm.dtypes.contains(&DType::F16));
    let err = config
        .add_model(fixture, None, None, "--model")
        .unwrap_err();
    assert!(err.contains("used twice"), "{err}");
    let err = config
        .add_model(fixture, Some("12345"), None, "--model")
        .unwrap_err();
    assert!(err.contains("invalid model name"), "{err}");
    let err = config
        .add_model("no/such/dir/here", None, None, "--model")
        .unwrap_err();
    assert!(err.contains("nor a hub id"), "{err}");
    let err = config
        .add_model("tests/fixtures", Some("x"), None, "--model")
        .unwrap_err();
    assert!(err.contains("no config.json"), "{err}");
    // A file's models come first: a command-line model may not take their names.
    let mut config = parse(&format!(
        "[[models]]\nname = \"tiny-opt-prenorm\"\npath = \"{fixture}\"\n"
    ))
    .unwrap();
    let err = config
        .add_model(fixture, None, None, "--model")
        .unwrap_err();
    assert!(err.contains("used twice"), "{err}");
}

#[test]
fn default_model_names_follow_the_engine_name_rule() {
    assert_eq!(default_model_name("facebook/opt-125m"), "opt-125m");
    assert_eq!(default_model_name("Qwen/Qwen2.5-0.5B"), "Qwen2.5-0.5B");
    assert_eq!(
        default_model_name("tests/fixtures/tiny-opt-prenorm/"),
        "tiny-opt-prenorm"
    );
    assert_eq!(
        default_model_name("tests/fixtures/tiny-opt-prenorm/.."),
        "fixtures"
    );
    assert_eq!(default_model_name("org/2024"), "model-2024");
    assert_eq!(default_model_name("org/a b+c"), "a-b-c");
    assert_eq!(default_model_name(""), "model");
    let long = format!("org/{}", "x".repeat(300));
    assert_eq!(default_model_name(&long).len(), 128);
    for model in ["facebook/opt-125m", "org/2024", "org/a b+c", "", &long] {
        let name = default_model_name(model);
        assert!(wc_actors::check_engine_name(&name).is_ok(), "{name}");
    }
    assert!(is_hub_id("facebook/opt-125m"));
    assert!(!is_hub_id("a/b/c") && !is_hub_id("../x") && !is_hub_id("opt"));
}

#[test]
fn a_missing_file_says_the_os_error_once() {
    let err = Config::load(Path::new("/no/such/config.toml")).unwrap_err();
    assert!(std::error::Error::source(&err).is_none());
    let printed = format!("{:#}", anyhow::Error::from(err));
    assert_eq!(printed.matches("No such file").count(), 1, "{printed}");
    assert!(printed.contains("/no/such/config.toml"), "{printed}");
}

#[path = "tests_sections.rs"]
mod sections;

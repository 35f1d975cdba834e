//! The library sections of a config (`[runtime]`, `[prewarm]`) and the CPUs a worker group may
//! keep its device threads on: defaults, overrides, and the line of every bad key or value.

use super::*;

#[test]
fn runtime_and_prewarm_sections_are_the_library_options_with_its_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.runtime, RuntimeOptions::default());
    assert_eq!(config.prewarm, PrewarmOptions::default());
    assert_eq!(config.runtime_config().options, RuntimeOptions::default());
    let cpu = usable_cpu();
    let config = parse(&format!(
        "[runtime]\nattach_timeout = 2\nrestart_backoff = \"250ms\"\nisolation = \"thread\"\n\
         heartbeat_timeout = \"1m\"\n\n[prewarm]\ndtypes = [\"f16\"]\nstaging = \"64MiB\"\n\
         host_cache = 1048576\nmemory_limit = \"2GB\"\ncpus = [{cpu}]\n\n[[workers]]\ndevice = \"cpu\"\ncount = 2\n",
    ))
    .unwrap();
    let runtime = config.runtime_config();
    // A bare number is seconds, in [runtime] as everywhere.
    assert_eq!(runtime.options.attach_timeout, Duration::from_secs(2));
    assert_eq!(runtime.options.restart_backoff, Duration::from_millis(250));
    assert_eq!(runtime.options.isolation, Isolation::Thread);
    assert_eq!(runtime.options.heartbeat_timeout, Duration::from_secs(60));
    let prewarm = PrewarmOptions {
        dtypes: vec![DType::F16],
        staging_bytes: 64 << 20,
        host_cache_bytes: 1 << 20,
        memory_limit_bytes: 2_000_000_000,
        cpus: vec![cpu],
        ..PrewarmOptions::default()
    };
    assert_eq!(runtime.workers.len(), 1);
    assert_eq!(runtime.workers[0].count, 2);
    assert_eq!(
        runtime.workers[0].prewarm, prewarm,
        "every group gets [prewarm]"
    );
}

/// A CPU this test process may run on.
fn usable_cpu() -> usize {
    crate::backend::affinity::allowed_cpus().unwrap()[0]
}

#[test]
fn a_worker_group_may_keep_its_device_threads_on_its_own_cpus() {
    let cpu = usable_cpu();
    let config = parse(&format!(
        "[prewarm]\ncpus = [{cpu}]\n\n[[workers]]\ndevice = \"cpu\"\ncpus = [{cpu}, {cpu}]\n\n\
         [[workers]]\ndevice = \"cpu\"\n",
    ))
    .unwrap();
    let cpus: Vec<Vec<usize>> = config
        .runtime_config()
        .workers
        .iter()
        .map(|w| w.prewarm.cpus.clone())
        .collect();
    assert_eq!(cpus, [vec![cpu, cpu], vec![cpu]]);
}

#[test]
fn cpus_the_process_may_not_use_are_refused_before_any_worker_starts() {
    for text in [
        "[prewarm]\ncpus = [100000]\n",
        "[[workers]]\ndevice = \"cpu\"\ncpus = [100000]\n",
    ] {
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.contains("CPU 100000") && err.contains("may run on"),
            "{err}"
        );
    }
}

#[test]
fn unknown_or_bad_keys_in_library_sections_name_their_line() {
    for (text, line, what) in [
        (
            "[prewarm]\nstaging = \"1MiB\"\nstaging_bytes = 5\n",
            3,
            "staging_bytes",
        ),
        ("[runtime]\nmax_restarts = 1\nworkers = []\n", 3, "workers"),
        ("[runtime]\nisolation = \"container\"\n", 2, "container"),
        ("[prewarm]\nhost_cache = \"lots\"\n", 2, "invalid byte size"),
        ("[prewarm]\nmemory_limit = -1\n", 2, "expected a byte size"),
    ] {
        let (at, err) = error_line(text);
        assert_eq!(at, line, "{text}: {err}");
        assert!(err.contains(what), "{text}: {err}");
    }
}

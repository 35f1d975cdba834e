//! A worker process's prompt encoders: a small pool of threads beside the engine's, a bounded
//! queue in front of them, and a watchdog. An encode runs a checkpoint's chat template and
//! tokenizer, which may not end: past [`ENCODE_TIMEOUT`] the process ends with that encode
//! unanswered, so that the parent answers it as the worker lost (503) and restarts the worker
//! instead of leaving a thread spinning on.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{EngineError, ErrorKind, Prompt, PromptEncoder};

/// Encodes that run at once.
pub(super) const ENCODE_THREADS: usize = 2;

/// Encodes that may wait for a thread; one more is refused at once.
pub(super) const ENCODE_QUEUE: usize = 256;

/// The longest one encode may run before the process gives up on it and ends.
/// `WC_ENCODE_TIMEOUT_MS` changes it (tests).
pub(super) const ENCODE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the watchdog looks at the running encodes.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// Where an encode's answer goes: its id and the ids (or why not).
pub(super) type Reply = Arc<dyn Fn(u64, Result<Vec<u32>, EngineError>) + Send + Sync>;

struct Job {
    id: u64,
    prompt: Prompt,
    encoder: Arc<dyn PromptEncoder>,
}

/// The encode each thread runs now, and since when.
type Running = Arc<Mutex<Vec<Option<(u64, Instant)>>>>;

/// The pool.
pub(super) struct Encoders {
    queue: SyncSender<Job>,
    reply: Reply,
}

/// The timeout in force: [`ENCODE_TIMEOUT`], or `WC_ENCODE_TIMEOUT_MS`.
pub(super) fn encode_timeout() -> Duration {
    std::env::var("WC_ENCODE_TIMEOUT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(ENCODE_TIMEOUT, Duration::from_millis)
}

impl Encoders {
    /// Starts the threads and the watchdog; `expired` runs (once) when an encode runs past
    /// `timeout`, unanswered, and is expected to end the process.
    pub(super) fn start(
        timeout: Duration,
        reply: Reply,
        expired: impl FnOnce() + Send + 'static,
    ) -> Self {
        let (queue, jobs) = mpsc::sync_channel::<Job>(ENCODE_QUEUE);
        let jobs = Arc::new(Mutex::new(jobs));
        let running: Running = Arc::new(Mutex::new(vec![None; ENCODE_THREADS]));
        for slot in 0..ENCODE_THREADS {
            let (jobs, running, reply) = (jobs.clone(), running.clone(), reply.clone());
            std::thread::spawn(move || work(slot, &jobs, &running, &reply));
        }
        std::thread::spawn(move || watch(timeout, &running, expired));
        Self { queue, reply }
    }

    /// Queues an encode; answered at once when the queue is full or there is no encoder.
    pub(super) fn submit(&self, id: u64, prompt: Prompt, encoder: Option<Arc<dyn PromptEncoder>>) {
        let Some(encoder) = encoder else {
            let none = "the worker process has no engine with an encoder";
            return (self.reply)(id, Err(EngineError::new(ErrorKind::Internal, none)));
        };
        let job = Job {
            id,
            prompt,
            encoder,
        };
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
            self.queue.try_send(job)
        {
            let busy = format!(
                "{ENCODE_QUEUE} prompts are already waiting to be encoded by this worker; try \
                 again later"
            );
            (self.reply)(job.id, Err(EngineError::new(ErrorKind::Internal, busy)));
        }
    }
}

fn work(slot: usize, jobs: &Mutex<Receiver<Job>>, running: &Running, reply: &Reply) {
    loop {
        let job = {
            let jobs = jobs.lock().unwrap_or_else(|p| p.into_inner());
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        set(running, slot, Some((job.id, Instant::now())));
        let ids = job.encoder.encode(&job.prompt);
        // Cleared before answering: the watchdog never answers an encode that was answered.
        let answered_by_watchdog = set(running, slot, None).is_none();
        if !answered_by_watchdog {
            reply(job.id, ids);
        }
    }
}

/// Sets `slot`; what it held.
fn set(running: &Running, slot: usize, to: Option<(u64, Instant)>) -> Option<(u64, Instant)> {
    let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::replace(&mut running[slot], to)
}

fn watch(timeout: Duration, running: &Running, expired: impl FnOnce()) {
    loop {
        std::thread::sleep(WATCH_EVERY);
        let late = {
            let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
            running
                .iter_mut()
                .find(|r| r.is_some_and(|(_, since)| since.elapsed() > timeout))
                .and_then(Option::take)
        };
        if let Some((id, _)) = late {
            // Not answered: the process ends with the encode still running, so the parent
            // answers it (and whatever else this worker had) as the worker lost, 503, and
            // restarts the worker.
            tracing::error!(
                encode = id,
                timeout_ms = timeout.as_millis() as u64,
                "encoding a prompt ran past the timeout: the model's chat template or tokenizer \
                 does not finish; the worker process ends to be restarted"
            );
            expired();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a prompt of ids as themselves, after spinning for as many milliseconds as the
    /// first id says.
    struct Slow;

    impl PromptEncoder for Slow {
        fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
            let Prompt::Ids(ids) = prompt else {
                return Err(EngineError::new(ErrorKind::InvalidRequest, "ids only"));
            };
            let until = Instant::now() + Duration::from_millis(ids[0] as u64);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            Ok(ids.clone())
        }
    }

    #[test]
    fn an_encode_past_the_timeout_is_left_unanswered_and_ends_the_process() {
        let (tx, answers) = mpsc::channel();
        let (ended, expired) = mpsc::channel();
        let reply: Reply = Arc::new(move |id, ids| {
            let _ = tx.send((id, ids));
        });
        let encoders = Encoders::start(Duration::from_millis(200), reply, move || {
            let _ = ended.send(());
        });
        encoders.submit(1, Prompt::Ids(vec![5]), Some(Arc::new(Slow)));
        let (id, ids) = answers.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((id, ids.unwrap()), (1, vec![5]));
        let started = Instant::now();
        encoders.submit(2, Prompt::Ids(vec![60_000]), Some(Arc::new(Slow)));
        expired.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            answers.try_recv().is_err(),
            "the late encode is answered by the parent as the worker lost, not here"
        );
    }
}

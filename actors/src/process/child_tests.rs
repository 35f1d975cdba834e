//! The worker process's loop with a fake batching engine: it steps its batch on its own, one
//! `Stepped` per step, with no message from the controller per step.

use super::*;
use crate::backend::{
    DType, DeviceSpec, FinishReason, Footprint, GenerateOutput, GenerateRequest, Handoff,
    MemoryInfo, ModelSpec, PrewarmOptions, PrewarmReport, TokenEvent,
};
use crate::batch::{BatchEngine, KvUsage, SeqEvent};
use crate::process::frame::read_frame;
use crate::process::protocol::StepReport;
use crate::timeline::Timeline;
use std::collections::HashMap;

/// A batching engine that gives each sequence token 1, 2, … one per step, 10 tokens of
/// KV cache reserved per sequence (a `max_new_tokens` of [`BIG`] or more reserves that many) out
/// of a budget of 100.
#[derive(Default)]
struct Counting {
    sequences: HashMap<SeqId, (usize, Vec<u32>)>,
}

/// Sequences asking this many tokens or more reserve that many.
const BIG: usize = 50;

fn reserve(max_new_tokens: usize) -> usize {
    match max_new_tokens >= BIG {
        true => max_new_tokens,
        false => 10,
    }
}

impl BatchEngine for Counting {
    fn admit(&mut self, id: SeqId, r: &GenerateRequest) -> Result<Admission, EngineError> {
        if self.kv_usage().reserved_tokens + reserve(r.max_new_tokens) > 100 {
            return Ok(Admission::NoRoomYet);
        }
        self.sequences.insert(id, (r.max_new_tokens, Vec::new()));
        Ok(Admission::Admitted)
    }

    fn step(&mut self) -> Result<Vec<SeqEvent>, EngineError> {
        let mut events = Vec::new();
        for (id, (max, tokens)) in &mut self.sequences {
            tokens.push(tokens.len() as u32 + 1);
            events.push(SeqEvent::Token(
                *id,
                TokenEvent::new(tokens.len() as u32, ""),
            ));
            if tokens.len() == *max {
                let output = GenerateOutput {
                    prompt_ids: Vec::new(),
                    new_tokens: tokens.clone(),
                    text: String::new(),
                    finish_reason: FinishReason::Length,
                    prefill_ms: 0.0,
                    decode_ms: 0.0,
                    cumulative_logprob: 0.0,
                    logprobs: Vec::new(),
                };
                events.push(SeqEvent::Finished(*id, Ok(output)));
            }
        }
        self.sequences
            .retain(|_, (max, tokens)| tokens.len() < *max);
        Ok(events)
    }

    fn cancel(&mut self, id: SeqId) {
        self.sequences.remove(&id);
    }

    fn kv_usage(&self) -> KvUsage {
        KvUsage {
            reserved_tokens: self.sequences.values().map(|(max, _)| reserve(*max)).sum(),
            budget_tokens: 100,
        }
    }
}

impl Engine for Counting {
    fn generate(
        &mut self,
        _: &GenerateRequest,
        _: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<crate::backend::GenerateOutput, EngineError> {
        Err(no("generate"))
    }

    fn warm_up(&mut self) -> Result<u32, EngineError> {
        Ok(0)
    }

    fn device_bytes(&self) -> u64 {
        0
    }

    fn batch(&mut self) -> Option<&mut dyn BatchEngine> {
        Some(self)
    }
}

struct Device;

impl WorkerDevice for Device {
    fn memory(&self) -> Result<MemoryInfo, EngineError> {
        Ok(MemoryInfo::default())
    }

    fn load(
        &mut self,
        _: &ModelSpec,
        _: &Handoff,
        _: &mut Timeline,
    ) -> Result<(Box<dyn Engine>, u64), EngineError> {
        Ok((Box::<Counting>::default(), 0))
    }

    fn synchronize(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

struct Fake;

impl Backend for Fake {
    fn inspect(&self, _: &ModelSpec) -> Result<Footprint, EngineError> {
        Ok(Footprint {
            device_bytes: 0,
            kv_bytes_per_token: 0,
            file_bytes: 0,
            dtype: DType::F32,
            handoff: Default::default(),
            weights: String::new(),
        })
    }

    fn open_device(
        &self,
        _: &DeviceSpec,
        _: &PrewarmOptions,
    ) -> Result<(Box<dyn WorkerDevice>, PrewarmReport), EngineError> {
        Ok((Box::new(Device), PrewarmReport::default()))
    }
}

/// What the worker writes, shared with the test.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn admit(id: SeqId, max_new_tokens: usize) -> ToWorker {
    let request = GenerateRequest {
        max_new_tokens,
        ..GenerateRequest::default()
    };
    ToWorker::Admit {
        id,
        request: request.clone(),
    }
}

/// The worker's loop over these messages (the controller gone after them), and what it sent.
fn serve(messages: Vec<ToWorker>) -> Vec<FromWorker> {
    let sink = Sink::default();
    let out: Output = Arc::new(Mutex::new(Box::new(sink.clone())));
    let (tx, rx) = mpsc::channel();
    for message in messages {
        tx.send(message).unwrap();
    }
    drop(tx);
    Worker::new(Arc::new(Fake), out, Arc::default(), Arc::default()).run(&rx);
    let bytes = sink.0.lock().unwrap().clone();
    let mut input = bytes.as_slice();
    std::iter::from_fn(|| read_frame::<FromWorker>(&mut input).unwrap()).collect()
}

fn opened_and_loaded() -> Vec<ToWorker> {
    vec![
        ToWorker::Open {
            device: DeviceSpec::Cpu,
            options: PrewarmOptions::default(),
        },
        ToWorker::Attach {
            spec: ModelSpec {
                model: "fake".into(),
                dtype: None,
                canonical: false,
                park: None,
            },
            handoff: Handoff::default(),
            timeline: Timeline::default(),
        },
    ]
}

#[test]
fn a_batch_decodes_to_the_end_on_one_admit_with_no_message_per_step() {
    let mut messages = opened_and_loaded();
    messages.extend([admit(1, 5), admit(2, 3)]);
    let sent = serve(messages);
    assert!(matches!(sent[0], FromWorker::Opened(Ok(_))), "{sent:?}");
    assert!(matches!(sent[1], FromWorker::Attached(Ok(_))), "{sent:?}");
    let shares: Vec<usize> = sent
        .iter()
        .filter_map(|m| match m {
            FromWorker::Admitted { result, share, .. } => {
                assert_eq!(*result.as_ref().unwrap(), Admission::Admitted);
                Some(*share)
            }
            _ => None,
        })
        .collect();
    assert_eq!(shares, [10, 10]);
    let steps: Vec<&StepReport> = sent
        .iter()
        .filter_map(|m| match m {
            FromWorker::Stepped(step) => Some(step),
            _ => None,
        })
        .collect();
    let events: Vec<&SeqEvent> = steps
        .iter()
        .flat_map(|s| s.result.as_ref().unwrap())
        .collect();
    let tokens = |seq| {
        let of_seq = |e: &&&SeqEvent| matches!(e, SeqEvent::Token(id, _) if *id == seq);
        events.iter().filter(of_seq).count()
    };
    assert_eq!((tokens(1), tokens(2)), (5, 3));
    let finished = events
        .iter()
        .filter(|e| matches!(e, SeqEvent::Finished(_, Ok(_))))
        .count();
    assert_eq!(finished, 2);
    // Five steps for the longest sequence, each reported once, none asked for; the last
    // reports the whole reservation freed, after both admits.
    assert_eq!(steps.len(), 5);
    let last = steps.last().unwrap();
    assert_eq!((last.kv.reserved_tokens, last.control), (0, 2));
}

#[test]
fn a_cancelled_sequence_is_not_stepped_and_a_cancel_is_not_answered() {
    let mut messages = opened_and_loaded();
    messages.extend([admit(1, 4), ToWorker::CancelSequence(1)]);
    let sent = serve(messages);
    // Opened, Attached, Admitted; no step for a batch emptied before it ran, no answer.
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(matches!(sent[2], FromWorker::Admitted { .. }));
}

/// The answers to the admits among `sent`, in order.
fn admissions(sent: &[FromWorker]) -> Vec<Admission> {
    sent.iter()
        .filter_map(|m| match m {
            FromWorker::Admitted { result, .. } => Some(*result.as_ref().unwrap()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_burst_of_admits_behind_one_without_room_waits_behind_it_in_order() {
    // 1 runs (10 of 100); 2 needs 95 and waits; 3 would fit but must not overtake 2.
    let mut messages = opened_and_loaded();
    messages.extend([admit(1, 3), admit(2, 95), admit(3, 3)]);
    let sent = serve(messages);
    use Admission::{Admitted, NoRoomYet};
    assert_eq!(admissions(&sent), [Admitted, NoRoomYet, NoRoomYet]);
    // Every admit of the burst was answered before the batch stepped.
    let first_step = sent
        .iter()
        .position(|m| matches!(m, FromWorker::Stepped(_)));
    let last_admit = sent
        .iter()
        .rposition(|m| matches!(m, FromWorker::Admitted { .. }));
    assert!(last_admit < first_step, "{sent:?}");
}

#[test]
fn with_nothing_running_a_request_that_never_fits_does_not_hold_back_the_next() {
    // 1 can never fit (the controller refuses it); 2 is admitted in the same burst.
    let mut messages = opened_and_loaded();
    messages.extend([admit(1, 101), admit(2, 3)]);
    use Admission::{Admitted, NoRoomYet};
    assert_eq!(admissions(&serve(messages)), [NoRoomYet, Admitted]);
}

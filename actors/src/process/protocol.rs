//! The messages between a worker's thread in the controller and its worker process.

use serde::{Deserialize, Serialize};

use crate::backend::{
    DeviceSpec, EngineError, GenerateOutput, GenerateRequest, MemoryInfo, ModelSpec,
    PrewarmOptions, PrewarmReport, Prompt, TokenEvent,
};
use crate::batch::{Admission, KvUsage, SeqEvent, SeqId};
use crate::timeline::Timeline;

/// From the controller to the worker process. Each is answered by one [`FromWorker`] (a
/// generation first by its tokens), except `Cancel`, which stops the running generation, and
/// `CancelSequence`, which drops a sequence from the batch. Nobody asks for batch steps: the
/// process runs them on its own while its batch has sequences, each reported by a `Stepped`.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    Open {
        device: DeviceSpec,
        options: PrewarmOptions,
    },
    Memory,
    /// A whole attach ([`crate::WorkerDevice::attach`]): load, warm-up, sizes, memory. A process
    /// loads only this way: one round trip.
    Attach {
        spec: ModelSpec,
        handoff: crate::backend::Handoff,
        timeline: Timeline,
    },
    WarmUp,
    Generate(GenerateRequest),
    Cancel,
    /// Admit a request into the engine's batch under this id.
    Admit {
        id: SeqId,
        request: GenerateRequest,
    },
    CancelSequence(SeqId),
    /// Encode a prompt with the engine's encoder, beside (not behind) a running generation.
    Encode {
        id: u64,
        prompt: Prompt,
    },
    Synchronize,
    DropEngine,
}

/// From the worker process to the controller.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// Sent a few times a second while the process's main thread is responsive.
    Alive,
    Opened(Result<PrewarmReport, EngineError>),
    Memory(Result<MemoryInfo, EngineError>),
    Attached(Result<Box<AttachedEngine>, EngineError>),
    WarmedUp(Result<u32, EngineError>),
    Token(TokenEvent),
    Generated(Result<GenerateOutput, EngineError>),
    /// An admit's answer, with the KV-cache usage after it and the tokens this admit reserved.
    Admitted {
        result: Result<Admission, EngineError>,
        kv: KvUsage,
        share: usize,
    },
    /// A step the process ran on its own, sent between the answers of the other messages.
    Stepped(StepReport),
    Encoded {
        id: u64,
        ids: Result<Vec<u32>, EngineError>,
    },
    Synchronized(Result<(), EngineError>),
    Dropped,
}

/// One batched step of the worker process.
#[derive(Debug, Serialize, Deserialize)]
pub struct StepReport {
    pub result: Result<Vec<SeqEvent>, EngineError>,
    /// The KV-cache usage after the step (finished sequences freed).
    pub kv: KvUsage,
    /// How many `Admit`s and `CancelSequence`s the process had handled before the step, so the
    /// controller knows whether `kv` reflects every one it sent.
    pub control: u64,
}

/// What an attach in the worker process gives back of the engine it keeps.
#[derive(Debug, Serialize, Deserialize)]
pub struct AttachedEngine {
    /// The anchors the load marked (on the clock every process shares).
    pub timeline: Timeline,
    pub bytes_moved: u64,
    /// Device bytes the engine holds (fixed from attach on: its KV slab is reserved then).
    pub device_bytes: u64,
    pub memory_before: MemoryInfo,
    pub memory_attached: MemoryInfo,
    /// Where the weights came from, as the process's device reports it.
    #[serde(default)]
    pub source: crate::source::SourceReport,
    /// Whether the engine encodes prompts off its thread.
    pub has_encoder: bool,
    /// Whether the engine batches requests ([`crate::Engine::batch`]).
    pub batches: bool,
    /// Its KV-cache budget (nothing reserved yet).
    pub kv: KvUsage,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::frame::{read_frame, write_frame};

    #[test]
    fn every_kind_of_message_crosses_the_wire() {
        let request = GenerateRequest {
            prompt: Prompt::Text("hi".into()),
            stop: vec!["\n".into()],
            seed: Some(3),
            logprobs: Some(2),
            presence_penalty: 0.5,
            logit_bias: vec![(7, -100.0)],
            ..GenerateRequest::default()
        };
        let mut buffer = Vec::new();
        write_frame(&mut buffer, &ToWorker::Generate(request.clone())).unwrap();
        write_frame(
            &mut buffer,
            &ToWorker::Open {
                device: DeviceSpec::Cpu,
                options: PrewarmOptions::default(),
            },
        )
        .unwrap();
        write_frame(
            &mut buffer,
            &FromWorker::Generated(Err(EngineError::new(
                crate::backend::ErrorKind::InvalidRequest,
                "too long",
            ))),
        )
        .unwrap();
        let kv = KvUsage {
            reserved_tokens: 7,
            budget_tokens: 100,
        };
        let stepped = FromWorker::Stepped(StepReport {
            result: Ok(Vec::new()),
            kv,
            control: 3,
        });
        write_frame(&mut buffer, &stepped).unwrap();
        let mut input = buffer.as_slice();
        match read_frame::<ToWorker>(&mut input).unwrap().unwrap() {
            ToWorker::Generate(read) => assert_eq!(read, request),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_frame::<ToWorker>(&mut input).unwrap().unwrap(),
            ToWorker::Open {
                device: DeviceSpec::Cpu,
                ..
            }
        ));
        match read_frame::<FromWorker>(&mut input).unwrap().unwrap() {
            FromWorker::Generated(Err(e)) => assert_eq!(e.message, "too long"),
            other => panic!("{other:?}"),
        }
        match read_frame::<FromWorker>(&mut input).unwrap().unwrap() {
            FromWorker::Stepped(report) => {
                assert_eq!((report.result.unwrap().len(), report.kv), (0, kv));
                assert_eq!(report.control, 3);
            }
            other => panic!("{other:?}"),
        }
    }
}

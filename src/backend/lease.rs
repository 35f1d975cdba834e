//! An engine lent out by a worker's device: it gives its bytes back to the device's account
//! when dropped, and its weights back to the parking (kept resident when they stay parked).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wc_actors::{Engine, EngineError, GenerateOutput, GenerateRequest, TokenEvent};

use super::device::lock;
use super::parking::{ParkKey, Parking};

/// An engine that gives its bytes back to its device's account when dropped.
pub(super) struct LeasedEngine {
    pub(super) engine: Box<dyn Engine>,
    pub(super) held: Arc<AtomicU64>,
    /// The weights it was lent, given back when it goes (and parked when the flag says so).
    pub(super) weights: Option<(Arc<Mutex<Parking>>, ParkKey, bool)>,
}

impl Drop for LeasedEngine {
    fn drop(&mut self) {
        self.held
            .fetch_sub(self.engine.device_bytes(), Ordering::SeqCst);
        if let Some((parking, key, park)) = &self.weights {
            lock(parking).give_back(key, *park);
        }
    }
}

impl Engine for LeasedEngine {
    fn generate(
        &mut self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> bool,
    ) -> Result<GenerateOutput, EngineError> {
        self.engine.generate(request, on_token)
    }

    fn warm_up(&mut self) -> Result<u32, EngineError> {
        self.engine.warm_up()
    }

    fn device_bytes(&self) -> u64 {
        self.engine.device_bytes()
    }

    fn prompt_encoder(&self) -> Option<Arc<dyn wc_actors::PromptEncoder>> {
        self.engine.prompt_encoder()
    }

    fn batch(&mut self) -> Option<&mut dyn wc_actors::BatchEngine> {
        self.engine.batch()
    }
}

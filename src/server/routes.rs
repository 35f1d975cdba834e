//! The route table: every endpoint, the methods it answers and who may call it, in one place.
//!
//! An endpoint cannot be declared without its [`Access`] class, and the key check
//! ([`super::middleware::guard`]) classifies a request by matching the path the router matches
//! (after its percent-decoding and our slash normalisation) against this same table. A path
//! the table does not know is [`Access::Control`]: a route registered any other way is closed
//! by default, never open by accident.

use std::sync::OnceLock;

use actix_web::dev::ResourceDef;
use actix_web::http::Method;
use actix_web::{web, FromRequest, Handler, Responder, Route};

use super::{chat, completions, control, health, model_card, tokenize, version};

/// Who may call an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Probes, scraping and the version: `/health`, `/ready`, `/metrics`, `/version`. Never
    /// behind the key.
    Public,
    /// The OpenAI API (`/v1/...`) and vLLM's `/tokenize` and `/detokenize`: behind the key
    /// unless `open_inference` is set.
    Inference,
    /// Workers and engines: always behind the key when one is configured.
    Control,
}

/// One path with its access class and the routes it answers.
pub struct Endpoint {
    pub path: &'static str,
    pub access: Access,
    /// The methods answered; any other method gets 405.
    pub methods: Vec<Method>,
    routes: Vec<Route>,
}

impl Endpoint {
    fn new(path: &'static str, access: Access) -> Self {
        Self {
            path,
            access,
            methods: Vec::new(),
            routes: Vec::new(),
        }
    }

    fn on<F, Args>(mut self, method: Method, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.routes
            .push(web::route().method(method.clone()).to(handler));
        self.methods.push(method);
        self
    }

    fn get<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args> + Clone,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.on(Method::GET, handler)
    }

    /// `GET` and `HEAD` (probes are often sent as `HEAD`; the body is left out for it).
    fn probe<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args> + Clone,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.on(Method::GET, handler.clone())
            .on(Method::HEAD, handler)
    }

    fn post<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.on(Method::POST, handler)
    }

    fn delete<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.on(Method::DELETE, handler)
    }

    /// The routes, for registering on a resource.
    pub fn into_routes(self) -> Vec<Route> {
        self.routes
    }
}

/// Every endpoint the server has.
pub fn endpoints() -> Vec<Endpoint> {
    use Access::*;
    vec![
        Endpoint::new("/health", Public).probe(health::health),
        Endpoint::new("/ready", Public).probe(health::ready),
        Endpoint::new("/v2/health/ready", Public).probe(health::ready),
        Endpoint::new("/metrics", Public).probe(health::metrics),
        Endpoint::new("/version", Public).get(version::version),
        Endpoint::new("/workers", Control).get(control::list_workers),
        Endpoint::new("/engines", Control)
            .get(control::list_engines)
            .post(control::attach),
        Endpoint::new("/engines/{id}", Control)
            .get(control::get_engine)
            .delete(control::detach),
        Endpoint::new("/v1/models", Inference).get(completions::models),
        // Model ids may hold slashes (hub ids): the rest of the path is the id.
        Endpoint::new("/v1/models/{id:.+}", Inference).get(model_card::model),
        Endpoint::new("/v1/completions", Inference).post(completions::completions),
        Endpoint::new("/v1/chat/completions", Inference).post(chat::chat_completions),
        Endpoint::new("/tokenize", Inference).post(tokenize::tokenize),
        Endpoint::new("/detokenize", Inference).post(tokenize::detokenize),
    ]
}

/// The access class of a path as the router sees it; [`Access::Control`] when no endpoint
/// matches (closed by default).
pub fn access_of(path: &str) -> Access {
    static TABLE: OnceLock<Vec<(ResourceDef, Access)>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        endpoints()
            .into_iter()
            .map(|e| (ResourceDef::new(e.path), e.access))
            .collect()
    });
    table
        .iter()
        .find(|(def, _)| def.is_match(path))
        .map_or(Access::Control, |(_, access)| *access)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified_by_the_table_and_unknown_ones_are_closed() {
        assert_eq!(access_of("/health"), Access::Public);
        assert_eq!(access_of("/metrics"), Access::Public);
        assert_eq!(access_of("/engines"), Access::Control);
        assert_eq!(access_of("/engines/3"), Access::Control);
        assert_eq!(access_of("/workers"), Access::Control);
        assert_eq!(access_of("/v1/completions"), Access::Inference);
        assert_eq!(access_of("/v1/models"), Access::Inference);
        assert_eq!(access_of("/v1/chat/completions"), Access::Inference);
        assert_eq!(access_of("/v1/models/tiny"), Access::Inference);
        assert_eq!(access_of("/v1/models/org/name"), Access::Inference);
        assert_eq!(access_of("/tokenize"), Access::Inference);
        assert_eq!(access_of("/detokenize"), Access::Inference);
        assert_eq!(access_of("/version"), Access::Public);
        assert_eq!(access_of("/version/x"), Access::Control);
        assert_eq!(access_of("/healthz"), Access::Control);
        assert_eq!(access_of("/HEALTH"), Access::Control);
        assert_eq!(access_of("/health/x"), Access::Control);
        assert_eq!(access_of("/v1/other"), Access::Control);
    }

    #[test]
    fn every_endpoint_declares_methods() {
        for endpoint in endpoints() {
            assert!(
                !endpoint.methods.is_empty(),
                "{} has no method",
                endpoint.path
            );
            assert!(endpoint.path.starts_with('/'), "{}", endpoint.path);
        }
    }
}

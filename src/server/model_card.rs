//! `GET /v1/models/{id}`: one entry of the `/v1/models` list, in OpenAI's model shape (the id
//! may hold slashes, as hub ids do); an id that is neither attached nor configured is a 404 in
//! the error shape of every other reply.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::Value;

use super::completions;
use super::error::ApiError;
use super::state::AppState;

/// `GET /v1/models/{id}`: the entry `GET /v1/models` lists for `id`.
pub async fn model(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let list = completions::models(state).await?;
    let body = actix_web::body::to_bytes(list.into_body())
        .await
        .map_err(|e| internal(format!("the model list could not be read: {e}")))?;
    let list: Value = serde_json::from_slice(&body)
        .map_err(|e| internal(format!("the model list is not JSON: {e}")))?;
    entry(list, &id)
        .map(|entry| HttpResponse::Ok().json(entry))
        .ok_or_else(|| ApiError::model_not_found(&id))
}

/// The entry of `list` (`{"object": "list", "data": [...]}`) whose `id` is `id`.
fn entry(list: Value, id: &str) -> Option<Value> {
    let Value::Object(mut list) = list else {
        return None;
    };
    let Value::Array(data) = list.remove("data")? else {
        return None;
    };
    data.into_iter().find(|m| m["id"] == id)
}

fn internal(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_entry_is_found_by_its_whole_id() {
        let list = json!({"object": "list", "data": [
            {"id": "a", "object": "model"}, {"id": "org/b", "object": "model"}]});
        assert_eq!(entry(list.clone(), "org/b").unwrap()["id"], "org/b");
        assert_eq!(entry(list.clone(), "b"), None);
        assert_eq!(entry(list, ""), None);
        assert_eq!(entry(json!([]), "a"), None);
    }
}

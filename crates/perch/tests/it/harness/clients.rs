//! The clients tests speak with: the DeviceManager gRPC client with a bearer token, and a JSON
//! client for the admin REST API.

use super::*;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub(crate) struct Bearer(pub(super) Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", MetadataValue::clone(token));
        }
        Ok(request)
    }
}

/// The gRPC client the tests use.
pub(crate) type Grpc = DeviceManagerClient<InterceptedService<Channel, Bearer>>;

/// A reply from the REST API: the HTTP status and the JSON body (`Null` if it was not JSON).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) text: String,
}

impl Reply {
    /// Asserts a 200 and returns the body.
    pub(crate) fn ok(self) -> Value {
        assert_eq!(self.status, 200, "{}", self.text);
        self.body
    }

    /// Asserts a `google.rpc.Status` error body with this HTTP status and code name; returns
    /// the message.
    pub(crate) fn error(&self, http: u16, status: &str) -> String {
        assert_eq!(self.status, http, "{}", self.text);
        let error = &self.body["error"];
        assert_eq!(error["code"], http, "{}", self.text);
        assert_eq!(error["status"], status, "{}", self.text);
        let message = error["message"].as_str().expect("error.message");
        assert!(!message.is_empty(), "{}", self.text);
        message.to_owned()
    }
}

/// A JSON client for the admin REST API.
pub(crate) struct Rest {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Rest {
    pub(super) fn new(base: String, token: Option<String>) -> Rest {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client");
        Rest { base, token, http }
    }

    /// Sends `method BASE+path` (path with its query) with a raw body.
    pub(crate) async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.expect("send the request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("read the response");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, body, text }
    }

    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        let body = body.map(|b| serde_json::to_vec(b).expect("json"));
        self.send_raw(method, path, body).await
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub(crate) async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

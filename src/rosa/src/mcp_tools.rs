//! A worker's tools: the tools of its robots' MCP servers (rmcp client, streamable HTTP).
//!
//! Tool names are kept as the servers name them; when two robots offer the same name, both are
//! exposed as `<robot>__<tool>` so the model can tell them apart.

use crate::agent::{ToolBox, ToolOutput};
use crate::llm::ToolSpec;
use crate::process::RobotToken;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    #[error("cannot connect to robot `{robot}` at {url}: {message}")]
    Connect { robot: String, url: String, message: String },
    #[error("robot `{robot}` did not list its tools: {message}")]
    ListTools { robot: String, message: String },
}

struct Server {
    robot: String,
    client: RunningService<RoleClient, ClientConfig>,
}

struct Route {
    server: usize,
    tool: String,
}

pub struct McpToolBox {
    servers: Vec<Server>,
    specs: Vec<ToolSpec>,
    routes: HashMap<String, Route>,
    call_timeout: Duration,
}

impl McpToolBox {
    /// Connect to every robot `(name, url)` (concurrently, over the shared `http` client) and list
    /// its tools; a robot with an entry in `tokens` is sent `Authorization: Bearer <token>`.
    pub async fn connect(
        robots: &[(String, String)],
        tokens: &[RobotToken],
        call_timeout: Duration,
        http: &reqwest::Client,
    ) -> Result<Self, McpError> {
        let connects = robots.iter().map(|(robot, url)| async move {
            let mut config = StreamableHttpClientTransportConfig::with_uri(url.clone());
            if let Some(t) = tokens.iter().find(|t| &t.robot == robot) {
                config = config.auth_header(t.token.clone());
            }
            let transport = StreamableHttpClientTransport::with_client(http.clone(), config);
            let client = tokio::time::timeout(Duration::from_secs(10), ClientConfig::default().serve(transport))
                .await
                .map_err(|_| McpError::Connect { robot: robot.clone(), url: url.clone(), message: "timed out".into() })?
                .map_err(|e| McpError::Connect { robot: robot.clone(), url: url.clone(), message: e.to_string() })?;
            let tools = client
                .list_all_tools()
                .await
                .map_err(|e| McpError::ListTools { robot: robot.clone(), message: e.to_string() })?;
            Ok::<_, McpError>((Server { robot: robot.clone(), client }, tools))
        });
        let connected = futures::future::try_join_all(connects).await?;

        let mut count: HashMap<String, usize> = HashMap::new();
        for (_, tools) in &connected {
            for t in tools {
                *count.entry(t.name.to_string()).or_default() += 1;
            }
        }
        let mut servers = Vec::new();
        let mut specs = Vec::new();
        let mut routes = HashMap::new();
        for (i, (server, tools)) in connected.into_iter().enumerate() {
            for t in tools {
                let name = t.name.to_string();
                let exposed = if count[&name] > 1 { format!("{}__{}", server.robot, name) } else { name.clone() };
                let mut description = t.description.as_deref().unwrap_or_default().to_string();
                if robots.len() > 1 {
                    description = format!("[{}] {}", server.robot, description);
                }
                specs.push(ToolSpec {
                    name: exposed.clone(),
                    description,
                    parameters: Value::Object((*t.input_schema).clone()),
                });
                routes.insert(exposed, Route { server: i, tool: name });
            }
            servers.push(server);
        }
        Ok(Self { servers, specs, routes, call_timeout })
    }

    /// Close the MCP sessions.
    pub async fn close(self) {
        for s in self.servers {
            let _ = s.client.cancel().await;
        }
    }
}

#[async_trait::async_trait]
impl ToolBox for McpToolBox {
    fn specs(&self) -> Vec<ToolSpec> {
        self.specs.clone()
    }

    async fn call(&self, name: &str, args: Map<String, Value>) -> ToolOutput {
        let Some(route) = self.routes.get(name) else {
            return ToolOutput::error(format!("unknown tool `{name}`"));
        };
        let server = &self.servers[route.server];
        let params = CallToolRequestParams::new(route.tool.clone()).with_arguments(args);
        match tokio::time::timeout(self.call_timeout, server.client.call_tool(params)).await {
            Err(_) => ToolOutput::error(format!(
                "tool `{name}` on robot `{}` did not answer within {:.0} s",
                server.robot,
                self.call_timeout.as_secs_f64()
            )),
            Ok(Err(e)) => ToolOutput::error(format!("tool `{name}` on robot `{}` failed: {e}", server.robot)),
            Ok(Ok(result)) => {
                let mut parts: Vec<String> = result
                    .content
                    .iter()
                    .map(|c| match c.as_text() {
                        Some(t) => t.text.clone(),
                        None => serde_json::to_string(c).unwrap_or_default(),
                    })
                    .collect();
                if parts.is_empty() {
                    if let Some(s) = &result.structured_content {
                        parts.push(s.to_string());
                    }
                }
                let text = parts.join("\n");
                if result.is_error == Some(true) {
                    ToolOutput::error(text)
                } else {
                    ToolOutput::ok(text)
                }
            }
        }
    }
}

//! `paddock openapi`: the gateway's OpenAPI 3.1 document. From the running
//! instance when there is one (with the handlers its workers announced), else from
//! the config alone (services whose handlers are unknown get the generic
//! `/v1/{service}/{method}` route).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::{client, output};
use crate::config::Config;
use crate::exit;
use crate::instance::Paths;

pub fn run(config: &Config) -> i32 {
    let doc = if client::running(&Paths::of(config)) {
        match from_daemon(config) {
            Ok(d) => d,
            Err(e) => {
                output::error(&format!(
                    "could not read /openapi.json from instance {} on {}: {e}",
                    config.instance.name, config.instance.listen
                ));
                return exit::FAILURE;
            }
        }
    } else {
        crate::openapi::document(config, &Default::default())
    };
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    exit::OK
}

/// GET /openapi.json from the gateway (with the instance's token, if it has one).
fn from_daemon(config: &Config) -> Result<serde_json::Value, String> {
    let mut s = TcpStream::connect_timeout(&config.instance.listen, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let auth = config
        .instance
        .auth_token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /openapi.json HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
        config.instance.listen
    )
    .map_err(|e| e.to_string())?;
    let mut buf = vec![];
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    serde_json::from_str(body).map_err(|e| e.to_string())
}

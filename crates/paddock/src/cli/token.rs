//! `paddock token`: prints what opens the instance's operator routes (`/admin/*`:
//! log lines, reload, job retry and cancel) and the dashboard's log view. On an
//! instance without `auth_token` that is a token the daemon made at its first start
//! and keeps 0600 in the instance's folder: whoever can read that folder may act as
//! its operator, other accounts on the machine may not.

use crate::config::Config;
use crate::exit;
use crate::instance::Paths;

use super::output;

pub fn run(config: &Config, json: bool) -> i32 {
    let paths = Paths::of(config);
    let (token, source) = match &config.instance.auth_token {
        Some(t) => (t.clone(), "instance.auth_token".to_string()),
        None => match paths.read_operator_token() {
            Some(t) => (t, paths.token.display().to_string()),
            None => {
                output::error(&format!(
                    "instance {} has no operator token yet: the daemon makes it ({}) when it first starts; run `paddock start`",
                    config.instance.name,
                    paths.token.display()
                ));
                return exit::NOT_RUNNING;
            }
        },
    };
    if json {
        let v = serde_json::json!({"token": token, "from": source, "header": format!("Authorization: Bearer {token}")});
        println!("{v}");
    } else {
        println!("{token}");
    }
    exit::OK
}

//! The gateway binary: configuration from the environment, then serve until Ctrl-C or SIGTERM.

use api::{config::Settings, startup::Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("api");
    let settings = Settings::from_env()?;
    Application::build(settings).await?.run_until_stopped(common::shutdown::signal()).await
}

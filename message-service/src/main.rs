//! The message-service binary: configuration from the environment, migrate, then serve until Ctrl-C or SIGTERM.

use message_service::{config::Settings, startup::Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init("message-service");
    let settings = Settings::from_env()?;
    Application::build(settings).await?.run_until_stopped(common::shutdown::signal()).await
}

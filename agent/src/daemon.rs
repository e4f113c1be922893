//! `defect-agent run`: wires the components together and runs until told to stop.
//!
//! This module owns the daemon's lifecycle: start-up order (result log, MQTT session, metrics
//! listener, model validated and warmed up, then `READY=1` to systemd without waiting for the
//! broker, then the workers and frame sources), the systemd watchdog (pinged only while the pipeline makes
//! progress), periodic retention of the result log, and the clean shutdown on SIGTERM:
//! `STOPPING=1`, no new frames, every frame in flight decided and logged, `offline` published.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::canary::Canary;
use crate::capture::Capture;
use crate::config::{Config, LineState};
use crate::health::Health;
use crate::metrics;
use crate::monitor::{self, MonitorSettings};
use crate::pipeline::{OutputStage, Pipeline, PipelineMetrics, spawn_output, spawn_workers};
use crate::result_log::{ResultLog, RetentionPolicy};
use crate::serving::{self, ModelSlot, ModelSource};
use crate::sources::{hot_folder, http};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state folder could not be created.
    #[error("agent.state_dir {path}: {source}")]
    StateDir {
        /// The folder.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The result log could not be opened.
    #[error(transparent)]
    ResultLog(#[from] crate::result_log::ResultLogError),
    /// The MQTT link could not be set up.
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::link::LinkError),
    /// No model could be put in service.
    #[error(transparent)]
    Model(#[from] serving::ServingError),
    /// A hot folder could not be watched.
    #[error(transparent)]
    HotFolder(#[from] hot_folder::HotFolderError),
    /// The HTTP listener could not start.
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// The metrics listener could not start.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// The capture store could not be opened.
    #[error(transparent)]
    Capture(#[from] crate::capture::store::CaptureError),
    /// A worker thread could not be started.
    #[error("cannot start inference workers: {0}")]
    Workers(std::io::Error),
}

/// What a running daemon exposes to its caller (tests and the demo).
#[derive(Debug, Clone)]
pub struct Running {
    /// Address of the HTTP listener, when configured.
    pub http: Option<std::net::SocketAddr>,
    /// Address of the metrics listener, when configured.
    pub metrics: Option<std::net::SocketAddr>,
    /// Shared health counters.
    pub health: Arc<Health>,
}

/// Runs the daemon until `shutdown` resolves, then drains and returns. `started` receives
/// what is running once frames are taken.
pub async fn run(
    config: Config,
    model: ModelSource,
    shutdown: impl Future<Output = ()>,
    started: Option<tokio::sync::oneshot::Sender<Running>>,
) -> Result<(), DaemonError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state_dir = &config.agent.state_dir;
    std::fs::create_dir_all(state_dir).map_err(|source| DaemonError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let log = ResultLog::open(
        &state_dir.join("results"),
        RetentionPolicy::from(&config.results),
    )?;
    let health = Arc::new(Health::default());
    let recorded = Arc::new(PipelineMetrics::new(
        config.stations.iter().map(|s| s.id.as_str()),
    ));
    let session_metrics = crate::mqtt::metrics::SessionMetrics::new(recorded.publish_stage());
    let client_id = client_id(&config);
    let topics = crate::mqtt::payload::Topics::new(&config.mqtt.topic_prefix);
    let (line_states, line_inbox) = tokio::sync::mpsc::unbounded_channel();
    let inbox = (config.monitor.line_state == LineState::Mqtt && config.monitor.camera_quiet_s > 0)
        .then(|| crate::mqtt::session::Inbox {
            filters: vec![topics.line_filter()],
            forward: line_states,
        });
    let publisher = crate::mqtt::start(
        &config.mqtt,
        client_id,
        log.clone(),
        Arc::clone(&health),
        session_metrics.clone(),
        inbox,
    )?;

    let slot = Arc::new(ModelSlot::default());
    let station_ids: Vec<String> = config.stations.iter().map(|s| s.id.clone()).collect();
    let monitor = monitor::start(
        MonitorSettings {
            alarms: config.monitor.alarm_settings(),
            drift: config.drift.drift_settings(),
            line_always_running: config.monitor.line_state == LineState::Always,
        },
        &station_ids,
        topics,
        Arc::clone(&slot),
        publisher.clone(),
        line_inbox,
    );
    // Candidates come from the model store only.
    let canary = matches!(model, ModelSource::Store(_))
        .then(|| Arc::new(Canary::new(Some(state_dir.join("canary.json")))));
    let capture_settings = config.capture_settings();
    let capture = match &capture_settings {
        Some(settings) => Some(Capture::start(settings, Some(Arc::clone(monitor.board())))?),
        None => None,
    };
    let deadline = Duration::from_millis(config.agent.decision_deadline_ms);
    let (pipeline, parts) = Pipeline::new(config.agent.queue_capacity, deadline, recorded);
    // Up before the model is validated: /healthz answers and /readyz says "not ready" meanwhile.
    let (stop_metrics, metrics_stopped) = watch::channel(false);
    let mut metrics_address = None;
    let mut metrics_task = None;
    if let Some(section) = &config.metrics {
        // Each component registers what it counts and keeps.
        let mut registry = metrics::registry();
        pipeline.register_metrics(&mut registry);
        session_metrics.register(&mut registry);
        slot.register_metrics(&mut registry);
        health.register_metrics(&mut registry);
        log.register_metrics(&mut registry);
        monitor.board().register_metrics(&mut registry);
        if let Some(capture) = &capture {
            capture.register_metrics(&mut registry);
        }
        if let Some(canary) = &canary {
            canary.register_metrics(&mut registry);
        }
        let readiness = Arc::clone(&health);
        let (address, listener, router) =
            metrics::bind(&section.listen, registry, move || readiness.ready()).await?;
        metrics_address = Some(address);
        let mut stopped = metrics_stopped;
        metrics_task = Some(tokio::spawn(metrics::serve(listener, router, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
    }

    let report = config.agent.model_health_file.as_deref();
    let watch_start = start_model(&model, report, &slot, &health, &publisher).await?;
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let workers = spawn_workers(
        config.worker_count(),
        &parts.queue,
        &pipeline,
        &slot,
        config.agent.dct_scaling,
        capture.as_ref(),
        canary.as_ref(),
    )
    .map_err(DaemonError::Workers)?;
    drop(parts.queue);
    let output = spawn_output(
        OutputStage {
            log: log.clone(),
            publisher: publisher.clone(),
            health: Arc::clone(&health),
            pipeline: pipeline.clone(),
            monitor: Some(monitor),
        },
        parts.outcomes,
    );

    let mut background = Vec::new();
    if let (ModelSource::Store(root), Some(canary)) = (&model, &canary) {
        background.push(tokio::spawn(serving::watch_store(
            root.clone(),
            watch_start,
            config.agent.model_health_file.clone(),
            Duration::from_millis(config.agent.model_poll_ms),
            Arc::clone(&slot),
            Arc::clone(&health),
            publisher.clone(),
            Arc::clone(canary),
        )));
        background.push(tokio::spawn(crate::canary::publish(
            Arc::clone(canary),
            publisher.clone(),
            crate::mqtt::payload::Topics::new(&config.mqtt.topic_prefix).canary(),
        )));
    }
    background.push(tokio::spawn(retention(log.clone())));
    if let (Some(capture), Some(upload)) = (
        &capture,
        capture_settings.as_ref().and_then(|s| s.upload.clone()),
    ) {
        background.push(tokio::spawn(crate::capture::upload::run(
            Arc::clone(capture.shared()),
            upload,
        )));
    }
    background.push(tokio::spawn(watchdog(
        pipeline.clone(),
        Arc::clone(&health),
    )));

    let mut folders = Vec::new();
    for station in &config.stations {
        if let Some(section) = &station.hot_folder {
            folders.push(hot_folder::watch(
                &station.id,
                section,
                pipeline.clone(),
                config.agent.max_frame_bytes,
            )?);
        }
    }
    let (stop_http, http_stopped) = watch::channel(false);
    let mut http_address = None;
    let mut http_task = None;
    if let Some(section) = &config.http {
        let stations: BTreeSet<String> = config.stations.iter().map(|s| s.id.clone()).collect();
        let (address, listener, router) = http::bind(
            &section.listen,
            pipeline.clone(),
            stations,
            Arc::clone(&health),
            config.agent.max_frame_bytes,
        )
        .await?;
        http_address = Some(address);
        let mut stopped = http_stopped.clone();
        http_task = Some(tokio::spawn(http::serve(listener, router, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
    }
    tracing::info!(
        stations = config.stations.len(),
        workers = workers.len(),
        deadline_ms = config.agent.decision_deadline_ms,
        "agent running"
    );
    if let Some(started) = started {
        let _ = started.send(Running {
            http: http_address,
            metrics: metrics_address,
            health: Arc::clone(&health),
        });
    }

    shutdown.await;
    tracing::info!(
        in_flight = pipeline.in_flight(),
        "stopping: no new frames; deciding the frames in flight"
    );
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    for folder in folders {
        folder.stop();
    }
    let _ = stop_http.send(true);
    let drain_limit = tokio::time::Instant::now() + deadline + Duration::from_secs(5);
    while pipeline.in_flight() > 0 && tokio::time::Instant::now() < drain_limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if pipeline.in_flight() > 0 {
        tracing::error!(
            in_flight = pipeline.in_flight(),
            "frames still in flight at shutdown"
        );
    }
    if let Some(task) = http_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    for task in background {
        task.abort();
    }
    // Every live outcome is logged and completed; the output stage may stop.
    output.abort();
    publisher.shutdown().await;
    if let Err(error) = log.sync() {
        tracing::error!(%error, "cannot flush the result log at shutdown");
    }
    // Scrapes are answered to the end of the drain.
    let _ = stop_metrics.send(true);
    if let Some(task) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    // The worker threads are idle; they end with the process.
    drop(workers);
    tracing::info!("stopped");
    Ok(())
}

/// Puts the first model in service; a store without a usable `current` falls back to the
/// shipped bundle, with the reason on the status. Returns where the store watcher starts:
/// the store bundle serving, or the one just refused (not validated again).
async fn start_model(
    model: &ModelSource,
    report: Option<&std::path::Path>,
    slot: &ModelSlot,
    health: &Health,
    publisher: &crate::mqtt::Publisher,
) -> Result<serving::WatchStart, DaemonError> {
    match serving::load_initial(model, report, slot, health, publisher).await {
        Ok(Some(sha)) => Ok(serving::WatchStart {
            serving: Some(sha),
            refused: None,
        }),
        Ok(None) => {
            tracing::warn!("the model store has no current bundle; serving the shipped bundle");
            serving::load_initial(&ModelSource::Shipped, None, slot, health, publisher).await?;
            Ok(serving::WatchStart::default())
        }
        Err(error) if matches!(model, ModelSource::Store(_)) => {
            tracing::error!(%error, "the model store's current bundle is unusable; serving the shipped bundle");
            publisher.model_error(Some(error.to_string()));
            serving::load_initial(&ModelSource::Shipped, None, slot, health, publisher).await?;
            Ok(serving::WatchStart {
                serving: None,
                refused: error.sha256().map(str::to_owned),
            })
        }
        Err(error) => Err(error.into()),
    }
}

fn client_id(config: &Config) -> String {
    if !config.mqtt.client_id.is_empty() {
        return config.mqtt.client_id.clone();
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        format!("defect-agent-{}", std::process::id())
    } else {
        format!("defect-agent-{host}")
    }
}

fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::debug!(%error, "systemd notification not sent");
    }
}

/// Pings the systemd watchdog while the pipeline makes progress: idle, or deciding frames.
async fn watchdog(pipeline: Pipeline, health: Arc<Health>) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return;
    }
    let period = Duration::from_micros(usec / 3).max(Duration::from_millis(100));
    let mut last = health.counts().outcomes;
    loop {
        tokio::time::sleep(period).await;
        let now = health.counts().outcomes;
        if pipeline.in_flight() == 0 || now != last {
            notify_systemd(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::warn!(
                in_flight = pipeline.in_flight(),
                "no frame decided for a watchdog period; not pinging"
            );
        }
        last = now;
    }
}

/// Applies the result log's retention policy every minute.
async fn retention(log: ResultLog) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    loop {
        ticker.tick().await;
        let log = log.clone();
        let now = crate::outcome::unix_ms();
        match tokio::task::spawn_blocking(move || log.enforce_retention(now)).await {
            // The log itself reports what it dropped.
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "result log retention failed"),
            Err(error) => tracing::error!(%error, "result log retention task failed"),
        }
    }
}

//! `defect-agent run`: builds the configured components, starts them, and stops them.
//!
//! This module owns the daemon's lifecycle: start-up order (result log, MQTT session, metrics
//! listener, model validated and warmed up, then `READY=1` to systemd without waiting for the
//! broker, then the workers, the output stage with its sinks, and the frame sources), the
//! systemd watchdog (pinged only while the pipeline makes progress), periodic retention of the
//! result log, and the clean shutdown on SIGTERM: `STOPPING=1`, the sources stop, every frame
//! in flight is decided and logged (the drain waits on the pipeline going idle), the worker and
//! writer threads are joined, every task ends, `offline` is published.
//!
//! Every component is started the same way: the daemon holds one shutdown token per stage of
//! the stop (sources, then output, then background work) and one task tracker, and waits for
//! the tracked tasks to end instead of aborting them.

use defect_shared::error_chain::Chain;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::canary::Canary;
use crate::canary::shadow::ShadowRun;
use crate::capture::{Capture, CaptureWriter};
use crate::config::{Config, LineState};
use crate::health::Health;
use crate::metrics;
use crate::monitor::{self, LineMessage, MonitorSettings};
use crate::mqtt::Publisher;
use crate::pipeline::{
    FrameHook, HookFactory, OutcomeSink, OutputStage, Pipeline, PipelineMetrics, WorkerSettings,
    Workers, spawn_workers,
};
use crate::result_log::{ResultLog, RetentionPolicy};
use crate::serving::{self, ModelSlot, ModelSource};
use crate::sources::hot_folder::HotFolder;
use crate::sources::http::HttpUpload;
use crate::sources::in_flight::quarantine_folder;
use crate::sources::{FrameSource, hot_folder, http};

/// How long the tasks of a stopping stage get to end.
const STAGE_GRACE: Duration = Duration::from_secs(5);

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

/// The stop signals of the daemon's stages, cancelled in this order.
#[derive(Default)]
struct Stops {
    /// The frame sources.
    sources: CancellationToken,
    /// The output stage, once every frame in flight is decided.
    output: CancellationToken,
    /// Background work: store watcher, canary evidence, retention, upload, watchdog.
    background: CancellationToken,
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
    let (publisher, line_states) = start_mqtt(&config, &log, &health, &session_metrics)?;

    let slot = Arc::new(ModelSlot::default());
    let station_ids: Vec<String> = config.stations.iter().map(|s| s.id.clone()).collect();
    let monitor = monitor::start(
        MonitorSettings {
            alarms: config.monitor.alarm_settings(),
            drift: config.drift.drift_settings(),
            line_always_running: config.monitor.line_state == LineState::Always,
            quarantine: config
                .stations
                .iter()
                .filter(|s| s.hot_folder.is_some())
                .map(|s| (s.id.clone(), quarantine_folder(state_dir, &s.id)))
                .collect(),
        },
        &station_ids,
        Arc::clone(&slot),
        Arc::new(publisher.clone()),
        line_states,
    );
    // Candidates come from the model store only.
    let canary = matches!(model, ModelSource::Store(_))
        .then(|| Arc::new(Canary::new(Some(state_dir.join("canary.json")))));
    let capture_settings = config.capture_settings();
    let (capture, capture_writer) = match &capture_settings {
        Some(settings) => {
            let (capture, writer) = Capture::start(settings, Some(Arc::clone(monitor.board())))?;
            (Some(capture), Some(writer))
        }
        None => (None, None),
    };
    let deadline = Duration::from_millis(config.agent.decision_deadline_ms);
    let (pipeline, parts) = Pipeline::new(
        config.agent.queue_capacity,
        deadline,
        config.worker_count(),
        recorded,
    );
    let tasks = TaskTracker::new();
    let stops = Stops::default();
    // Up before the model is validated: /healthz answers and /readyz says "not ready" meanwhile.
    let stop_metrics = CancellationToken::new();
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
        let listener = metrics::bind(&section.listen, registry, move || readiness.ready()).await?;
        metrics_address = Some(listener.local_addr());
        metrics_task = Some(tokio::spawn(
            listener.serve(stop_metrics.clone().cancelled_owned()),
        ));
    }

    let report = config.agent.model_health_file.as_deref();
    let watch_start = start_model(&model, report, &slot, &health, &publisher).await?;
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let workers = spawn_workers(
        WorkerSettings {
            count: config.worker_count(),
            slot: Arc::clone(&slot),
            dct_scaling: config.agent.dct_scaling,
            hooks: frame_hooks(
                canary.as_ref(),
                &slot,
                config.agent.dct_scaling,
                capture.as_ref(),
            ),
        },
        &parts.queue,
        &pipeline,
    )
    .map_err(DaemonError::Workers)?;
    drop(parts.queue);
    let sinks: Vec<Arc<dyn OutcomeSink>> = vec![Arc::new(publisher.clone()), Arc::new(monitor)];
    let output = OutputStage {
        log: log.clone(),
        health: Arc::clone(&health),
        pipeline: pipeline.clone(),
        sinks,
    };
    let output = tokio::spawn(output.run(parts.outcomes, stops.output.clone()));

    spawn_background(
        Background {
            config: &config,
            model: &model,
            watch_start,
            slot: &slot,
            health: &health,
            publisher: &publisher,
            canary: canary.as_ref(),
            log: &log,
            capture: capture.as_ref(),
            pipeline: &pipeline,
        },
        &tasks,
        &stops.background,
    );
    drop(capture);

    let (sources, http_address) = frame_sources(&config, &health, &log).await?;
    for source in sources {
        tracing::debug!(source = %source.describe(), "starting frame source");
        source.start(pipeline.clone(), stops.sources.clone(), &tasks);
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
    drain(Drain {
        pipeline,
        deadline,
        workers,
        capture_writer,
        output,
        stops,
        tasks,
    })
    .await;
    publisher.shutdown().await;
    if let Err(error) = log.sync() {
        tracing::error!(error = %Chain(&error), "cannot flush the result log at shutdown");
    }
    // Scrapes are answered to the end of the drain.
    stop_metrics.cancel();
    if let Some(task) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts the MQTT session; returns it and the line-state messages of the stations' PLCs.
fn start_mqtt(
    config: &Config,
    log: &ResultLog,
    health: &Arc<Health>,
    session_metrics: &crate::mqtt::metrics::SessionMetrics,
) -> Result<(Publisher, tokio::sync::mpsc::UnboundedReceiver<LineMessage>), DaemonError> {
    let topics = crate::mqtt::payload::Topics::new(&config.mqtt.topic_prefix);
    let (line_tx, line_rx) = tokio::sync::mpsc::unbounded_channel();
    let inbox = (config.monitor.line_state == LineState::Mqtt && config.monitor.camera_quiet_s > 0)
        .then(|| {
            let (forward, mut messages) =
                tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
            let line_topics = topics.clone();
            // Ends with the session, which holds the sending side.
            tokio::spawn(async move {
                while let Some((topic, payload)) = messages.recv().await {
                    match line_topics.line_station(&topic) {
                        Some(station) => {
                            let station = station.to_owned();
                            let _ = line_tx.send(LineMessage { station, payload });
                        }
                        None => tracing::debug!(topic, "not a line-state topic"),
                    }
                }
            });
            crate::mqtt::session::Inbox {
                filters: vec![topics.line_filter()],
                forward,
            }
        });
    let publisher = crate::mqtt::start(
        &config.mqtt,
        client_id(config),
        log.clone(),
        Arc::clone(health),
        session_metrics.clone(),
        inbox,
    )?;
    Ok((publisher, line_rx))
}

/// The hooks every worker calls on a decided frame, in order: the canary's shadow run (its
/// disagreements are what capture keeps first), then data capture.
fn frame_hooks(
    canary: Option<&Arc<Canary>>,
    slot: &Arc<ModelSlot>,
    dct_scaling: bool,
    capture: Option<&Capture>,
) -> Vec<HookFactory> {
    let mut hooks: Vec<HookFactory> = Vec::new();
    if let Some(canary) = canary {
        let (canary, slot) = (Arc::clone(canary), Arc::clone(slot));
        hooks.push(Arc::new(move || -> Box<dyn FrameHook> {
            Box::new(ShadowRun::new(
                Arc::clone(&canary),
                Arc::clone(&slot),
                dct_scaling,
            ))
        }));
    }
    if let Some(capture) = capture {
        let capture = capture.clone();
        hooks.push(Arc::new(move || -> Box<dyn FrameHook> {
            Box::new(capture.clone())
        }));
    }
    hooks
}

/// Builds the configured frame sources: each station's hot folder, and the HTTP upload.
/// Returns them and the HTTP listener's address.
async fn frame_sources(
    config: &Config,
    health: &Arc<Health>,
    log: &ResultLog,
) -> Result<(Vec<Box<dyn FrameSource>>, Option<std::net::SocketAddr>), DaemonError> {
    let mut sources: Vec<Box<dyn FrameSource>> = Vec::new();
    for station in &config.stations {
        if let Some(section) = &station.hot_folder {
            let folder = HotFolder::open(
                &station.id,
                section,
                config.agent.max_frame_bytes,
                log.clone(),
                &config.agent.state_dir,
            )?;
            sources.push(Box::new(folder));
        }
    }
    let mut address = None;
    if let Some(section) = &config.http {
        let stations: BTreeSet<String> = config.stations.iter().map(|s| s.id.clone()).collect();
        let upload = HttpUpload::bind(
            &section.listen,
            stations,
            Arc::clone(health),
            config.agent.max_frame_bytes,
        )
        .await?;
        address = Some(upload.address());
        sources.push(Box::new(upload));
    }
    Ok((sources, address))
}

/// What the background work is made from.
struct Background<'a> {
    config: &'a Config,
    model: &'a ModelSource,
    watch_start: serving::WatchStart,
    slot: &'a Arc<ModelSlot>,
    health: &'a Arc<Health>,
    publisher: &'a Publisher,
    canary: Option<&'a Arc<Canary>>,
    log: &'a ResultLog,
    capture: Option<&'a Capture>,
    pipeline: &'a Pipeline,
}

/// Starts the background work on `tasks`, until `stop`: the model store's watcher and the
/// canary's evidence (with a model store), the result log's retention, the capture upload
/// (when configured) and the systemd watchdog.
fn spawn_background(work: Background<'_>, tasks: &TaskTracker, stop: &CancellationToken) {
    let Background {
        config,
        model,
        watch_start,
        slot,
        health,
        publisher,
        canary,
        log,
        capture,
        pipeline,
    } = work;
    if let (ModelSource::Store(root), Some(canary)) = (model, canary) {
        let watch = serving::watch_store(
            root.clone(),
            watch_start,
            config.agent.model_health_file.clone(),
            Duration::from_millis(config.agent.model_poll_ms),
            Arc::clone(slot),
            Arc::clone(health),
            publisher.clone(),
            Arc::clone(canary) as Arc<dyn serving::CandidateObserver>,
        );
        spawn_until(tasks, stop, watch);
        let (evidence, topic) = (publisher.clone(), publisher.topics().canary());
        let publish = crate::canary::publish(Arc::clone(canary), move |bytes| {
            evidence.retained(topic.clone(), bytes);
        });
        spawn_until(tasks, stop, publish);
    }
    spawn_until(tasks, stop, retention(log.clone()));
    let upload = config.capture_settings().and_then(|s| s.upload);
    if let (Some(capture), Some(upload)) = (capture, upload) {
        let upload = crate::capture::upload::run(Arc::clone(capture.shared()), upload);
        spawn_until(tasks, stop, upload);
    }
    spawn_until(tasks, stop, watchdog(pipeline.clone(), Arc::clone(health)));
}

/// Spawns `work` on `tasks`; it ends when `stop` is cancelled.
fn spawn_until(
    tasks: &TaskTracker,
    stop: &CancellationToken,
    work: impl Future<Output = ()> + Send + 'static,
) {
    let stop = stop.clone();
    tasks.spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = work => {}
        }
    });
}

/// What the shutdown stops, in order.
struct Drain {
    pipeline: Pipeline,
    deadline: Duration,
    workers: Workers,
    capture_writer: Option<CaptureWriter>,
    output: tokio::task::JoinHandle<()>,
    stops: Stops,
    tasks: TaskTracker,
}

/// The clean stop: no new frames; every frame in flight decided, logged and completed; the
/// threads joined and the tasks ended.
async fn drain(drain: Drain) {
    let Drain {
        pipeline,
        deadline,
        workers,
        capture_writer,
        output,
        stops,
        tasks,
    } = drain;
    tracing::info!(
        in_flight = pipeline.in_flight(),
        "stopping: no new frames; deciding the frames in flight"
    );
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    stops.sources.cancel();
    // An upload still being received now gets "no decision" (shutting_down) at once.
    pipeline.close();
    // Every frame has its deadline timer: a frame in flight is done by its deadline.
    let limit = deadline + STAGE_GRACE;
    if tokio::time::timeout(limit, pipeline.drained())
        .await
        .is_err()
    {
        tracing::error!(
            in_flight = pipeline.in_flight(),
            "frames still in flight at shutdown"
        );
    }
    pipeline.stop_timers();
    let joined = tokio::task::spawn_blocking(move || {
        workers.stop_and_join();
        // The workers held the last capture handles: the writer stores what it was given.
        if let Some(writer) = capture_writer {
            writer.join();
        }
    })
    .await;
    if let Err(error) = joined {
        tracing::error!(error = %Chain(&error), "cannot join the worker threads");
    }
    stops.output.cancel();
    if let Err(error) = output.await {
        tracing::error!(error = %Chain(&error), "the output stage failed");
    }
    stops.background.cancel();
    tasks.close();
    if tokio::time::timeout(STAGE_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::error!(tasks = tasks.len(), "tasks still running at shutdown");
    }
}

/// Puts the first model in service; a store without a usable `current` falls back to the
/// shipped bundle, with the reason on the status. Returns where the store watcher starts:
/// the store bundle serving, or the one just refused (not validated again).
async fn start_model(
    model: &ModelSource,
    report: Option<&std::path::Path>,
    slot: &ModelSlot,
    health: &Health,
    publisher: &Publisher,
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
            tracing::error!(error = %Chain(&error), "the model store's current bundle is unusable; serving the shipped bundle");
            publisher.model_error(Some(Chain(&error).to_string()));
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
        tracing::debug!(error = %Chain(&error), "systemd notification not sent");
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
            Ok(Err(error)) => {
                tracing::error!(error = %Chain(&error), "result log retention failed")
            }
            Err(error) => {
                tracing::error!(error = %Chain(&error), "result log retention task failed")
            }
        }
    }
}

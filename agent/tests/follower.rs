//! The follower against a scripted agent: stale epochs are dropped, resubscriptions report the
//! highest epoch seen, acknowledgements survive reconnections, an absent agent is no error, and
//! progress reports reach the agent, or stop after one if it predates them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::Follower;
use splitinfer_proto::v1 as pb;
use splitinfer_proto::v1::agent_server::{Agent, AgentServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

fn decision(epoch: u64, k: u32) -> pb::Decision {
    pb::Decision { split: Some(pb::Split { k, epoch }), reason: format!("scripted {epoch}"), ..Default::default() }
}

/// Each subscription gets the next batch of decisions; every batch but the last then ends the
/// stream, which makes the follower reconnect.
#[derive(Default)]
struct Scripted {
    batches: Mutex<Vec<Vec<pb::Decision>>>,
    subscribes: Arc<Mutex<Vec<pb::SubscribeRequest>>>,
    acks: Arc<Mutex<Vec<(u64, u32)>>>,
    reports: Arc<Mutex<Vec<pb::ReportRequest>>>,
    /// Answer Report as an agent from before it was added would.
    predates_report: bool,
}

#[tonic::async_trait]
impl Agent for Scripted {
    type SubscribeStream = ReceiverStream<Result<pb::Decision, Status>>;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        self.subscribes.lock().unwrap().push(request.into_inner());
        let (batch, last) = {
            let mut b = self.batches.lock().unwrap();
            if b.len() > 1 { (b.remove(0), false) } else { (b.first().cloned().unwrap_or_default(), true) }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for d in batch {
                tx.send(Ok(d)).await.unwrap();
            }
            if last {
                tx.closed().await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(&self, request: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let r = request.into_inner();
        self.acks.lock().unwrap().push((r.epoch, r.k));
        Ok(Response::new(pb::AckResponse {}))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::AgentStatus>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn r#override(&self, _: Request<pb::OverrideRequest>) -> Result<Response<pb::OverrideResponse>, Status> {
        Err(Status::unimplemented("scripted"))
    }

    async fn report(&self, request: Request<pb::ReportRequest>) -> Result<Response<pb::ReportResponse>, Status> {
        self.reports.lock().unwrap().push(request.into_inner());
        if self.predates_report {
            return Err(Status::unimplemented("unknown method Report"));
        }
        Ok(Response::new(pb::ReportResponse {}))
    }
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never: {what}");
}

fn latest(f: &Follower) -> Option<(u64, u32)> {
    f.latest().map(|d| (d.split.unwrap().epoch, d.split.unwrap().k))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_are_dropped_and_resubscriptions_report_the_highest_seen() {
    let agent = Scripted {
        batches: Mutex::new(vec![vec![decision(3, 10), decision(2, 11), decision(3, 12)], vec![decision(3, 13), decision(5, 20)]]),
        ..Default::default()
    };
    let (subscribes, acks) = (agent.subscribes.clone(), agent.acks.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(tonic::transport::Server::builder().add_service(AgentServer::new(agent)).serve_with_incoming(TcpListenerStream::new(listener)));

    let shutdown = CancellationToken::new();
    let f = Follower::spawn(url, "ue-1".into(), pb::Role::Ue, shutdown.clone());
    let mut rx = f.decisions();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while rx.changed().await.is_ok() {
            let (e, k) = rx.borrow_and_update().as_ref().map(|d| (d.split.unwrap().epoch, d.split.unwrap().k)).unwrap();
            seen.push((e, k));
            if e == 5 {
                break;
            }
        }
    })
    .await
    .unwrap();
    // Only increasing epochs get through (a watch may coalesce, so 3 may be skipped, never 2).
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0) && seen.last() == Some(&(5, 20)) && !seen.iter().any(|s| s.0 == 2 || s.1 == 12 || s.1 == 13), "{seen:?}");

    let subs = subscribes.lock().unwrap().clone();
    assert_eq!(subs.len(), 2);
    assert_eq!((subs[0].subscriber.as_str(), subs[0].role(), subs[0].last_epoch), ("ue-1", pb::Role::Ue, 0));
    assert_eq!(subs[1].last_epoch, 3, "the highest epoch received, though none was acknowledged");
    assert!(f.connected());

    f.ack(5, 20);
    f.ack(4, 11); // older: nothing to send
    eventually("the ack arrives", || acks.lock().unwrap().as_slice() == [(5, 20)]).await;
    // A new subscriber view starts with the latest decision reported as changed.
    let mut again = f.decisions();
    assert!(again.has_changed().unwrap());
    assert_eq!(again.borrow_and_update().as_ref().unwrap().split.unwrap().epoch, 5);

    shutdown.cancel();
    eventually("disconnected after shutdown", || !f.connected()).await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_reach_the_agent_across_a_reconnection() {
    // The first subscription ends at once, so the ack is most likely made while reconnecting.
    let agent = Scripted { batches: Mutex::new(vec![vec![decision(7, 3)], vec![]]), ..Default::default() };
    let (subscribes, acks) = (agent.subscribes.clone(), agent.acks.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(tonic::transport::Server::builder().add_service(AgentServer::new(agent)).serve_with_incoming(TcpListenerStream::new(listener)));
    let shutdown = CancellationToken::new();
    let f = Follower::spawn(url, "edge".into(), pb::Role::Edge, shutdown.clone());
    eventually("the decision", || latest(&f) == Some((7, 3))).await;
    f.ack(7, 3);
    eventually("the ack after resubscribing", || acks.lock().unwrap().contains(&(7, 3))).await;
    assert_eq!(subscribes.lock().unwrap().last().unwrap().last_epoch, 7);
    shutdown.cancel();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_agent_means_no_decisions_and_no_error() {
    let shutdown = CancellationToken::new();
    let f = Follower::spawn("http://127.0.0.1:1".into(), "ue".into(), pb::Role::Ue, shutdown.clone());
    f.ack(1, 1); // kept for later, never blocks
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!f.connected());
    assert!(latest(&f).is_none());
    let bad = Follower::spawn("not a url".into(), "ue".into(), pb::Role::Ue, shutdown.clone());
    assert!(!bad.connected() && latest(&bad).is_none());
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_reach_the_agent_unless_it_predates_them() {
    for predates_report in [false, true] {
        let agent = Scripted { batches: Mutex::new(vec![vec![decision(7, 3)]]), predates_report, ..Default::default() };
        let reports = agent.reports.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(tonic::transport::Server::builder().add_service(AgentServer::new(agent)).serve_with_incoming(TcpListenerStream::new(listener)));
        let shutdown = CancellationToken::new();
        let f = Follower::spawn(url, "ue".into(), pb::Role::Ue, shutdown.clone());
        // Made before the subscription is up: kept and sent once it is.
        f.report(pb::ReportRequest { subscriber: "ue".into(), tokens: 1, ..Default::default() });
        eventually("the first report", || reports.lock().unwrap().len() == 1).await;
        // Reports are sent one at a time in the background: wait for each to be answered.
        tokio::time::sleep(Duration::from_millis(200)).await;
        f.report(pb::ReportRequest { subscriber: "ue".into(), tokens: 2, text: "hi".into(), finished: true, ..Default::default() });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tokens: Vec<u32> = reports.lock().unwrap().iter().map(|r| r.tokens).collect();
        if predates_report {
            assert_eq!(tokens, [1], "after UNIMPLEMENTED the follower stops reporting");
        } else {
            assert_eq!(tokens, [1, 2]);
            assert_eq!(reports.lock().unwrap()[1].text, "hi");
        }
        assert!(f.connected(), "a report's fate does not touch the subscription");
        shutdown.cancel();
        server.abort();
    }
}

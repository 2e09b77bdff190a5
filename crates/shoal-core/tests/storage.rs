//! The node core when its store cannot write (issue 15 item 4): a master steps down, nobody campaigns or votes
//! while storage fails (a term it cannot persist could be reused), the node follows whoever wins, and once the
//! store recovers it campaigns again as usual.
#![allow(clippy::unwrap_used)]

use shoal_core::election::STORAGE_FAILED_WAIT_MS;
use shoal_core::node::{NodeConfig, NodeCore, NodeInput, NodeOutput, Outgoing, RoleChange};
use shoal_types::model::NodeFact;
use shoal_types::wire::ElectionMsg;
use shoal_types::{NodeId, Pos, SessionId, State};

const DISK_FULL: &str = "master commit failed: No space left on device (os error 28)";

fn id(b: u8) -> NodeId {
    NodeId::from_bytes([b; 16])
}

/// Ticks every 10 ms from `from` to `to`, returning every output.
fn run(core: &mut NodeCore, from: u64, to: u64) -> Vec<NodeOutput> {
    let mut out = Vec::new();
    let mut t = from;
    while t <= to {
        out.extend(core.step(NodeInput::Tick, t));
        t += 10;
    }
    out
}

fn campaigns(out: &[NodeOutput]) -> usize {
    out.iter()
        .filter(|o| {
            matches!(
                o,
                NodeOutput::Send(Outgoing::Campaign(_)) | NodeOutput::PersistMaxTerm(_)
            )
        })
        .count()
}

fn lone_master() -> (NodeCore, SessionId) {
    let mut core = NodeCore::new(NodeConfig::new(id(0x21), 7), State::empty(), 0, 0);
    run(&mut core, 0, 1_500);
    let session = core.master_of().unwrap();
    (core, session)
}

#[test]
fn a_master_whose_store_fails_steps_down_and_stands_aside_until_it_recovers() {
    let (mut core, session) = lone_master();
    let out = core.step(
        NodeInput::StorageFailed {
            error: DISK_FULL.into(),
            lost: Vec::new(),
        },
        1_600,
    );
    assert!(
        out.contains(&NodeOutput::Role(RoleChange::SteppedDown(session))),
        "{out:?}"
    );
    assert!(core.master_of().is_none() && core.storage_failed());
    assert_eq!(core.tokens().master, None, "the master token goes, so the others elect");

    let idle = run(&mut core, 1_610, 20_000);
    assert_eq!(campaigns(&idle), 0, "no campaign while the store fails: {idle:?}");
    assert!(core.master_of().is_none());
    // The loop is not woken in a spin: the next deadline stays ahead of now.
    assert!(
        core.next_deadline_ms()
            .is_some_and(|d| d > 20_000 - STORAGE_FAILED_WAIT_MS)
    );

    core.step(NodeInput::StorageRecovered, 20_010);
    assert!(!core.storage_failed());
    let back = run(&mut core, 20_020, 20_020 + STORAGE_FAILED_WAIT_MS + 1_500);
    assert!(campaigns(&back) > 0, "campaigns again once the store writes");
    let again = core.master_of().unwrap();
    assert!(again.term > session.term, "{again:?} after {session:?}");
}

#[test]
fn a_failed_node_does_not_vote_and_follows_whoever_wins() {
    let (mut core, session) = lone_master();
    core.step(
        NodeInput::StorageFailed {
            error: DISK_FULL.into(),
            lost: Vec::new(),
        },
        1_600,
    );
    let rival = id(0x42);
    let candidate = shoal_types::wire::Candidate {
        node: rival,
        last: Pos::EMPTY,
        priority: 0,
        incumbent: false,
    };
    let out = core.step(
        NodeInput::Campaign(ElectionMsg::Campaign {
            term: session.term + 1,
            candidate,
        }),
        1_700,
    );
    assert_eq!(campaigns(&out), 0, "joins no campaign: {out:?}");

    let winner = SessionId {
        term: session.term + 1,
        master: rival,
    };
    let out = core.step(NodeInput::MasterTokenAppeared(winner), 2_200);
    assert!(
        out.contains(&NodeOutput::Role(RoleChange::Following(winner))),
        "{out:?}"
    );
    assert_eq!(core.following(), Some(winner));
    // Its master lost, it waits for the next one instead of campaigning.
    core.step(NodeInput::MasterTokenGone(winner), 3_000);
    let out = run(&mut core, 3_010, 10_000);
    assert_eq!(campaigns(&out), 0, "{out:?}");
}

#[test]
fn a_follower_whose_store_fails_keeps_following() {
    let mut core = NodeCore::new(NodeConfig::new(id(0x21), 7), State::empty(), 0, 0);
    let master = SessionId {
        term: 1,
        master: id(0x42),
    };
    core.step(NodeInput::MasterTokenAppeared(master), 10);
    assert_eq!(core.following(), Some(master));
    let out = core.step(
        NodeInput::StorageFailed {
            error: DISK_FULL.into(),
            lost: Vec::new(),
        },
        20,
    );
    assert!(out.iter().all(|o| !matches!(o, NodeOutput::Role(_))), "{out:?}");
    assert_eq!(core.following(), Some(master));
}

#[test]
fn the_own_events_of_a_batch_that_failed_to_commit_go_to_the_next_master() {
    let (mut core, session) = lone_master();
    let fact = shoal_types::model::NodeFact::Memory(shoal_types::model::Memory {
        total: 10,
        available: 5,
    });
    let out = core.step(NodeInput::Facts(vec![fact.clone()]), 1_600);
    let lost: Vec<_> = out
        .into_iter()
        .filter_map(|o| match o {
            NodeOutput::Indexed(e) => Some(*e),
            _ => None,
        })
        .collect();
    assert_eq!(lost.len(), 1, "indexed by its own master");
    assert!(core.outbox().is_empty(), "cleared once indexed");

    core.step(
        NodeInput::StorageFailed {
            error: DISK_FULL.into(),
            lost,
        },
        1_610,
    );
    assert_eq!(core.outbox().len(), 2, "back in the outbox, beside the store's fault");
    let winner = SessionId {
        term: session.term + 1,
        master: id(0x42),
    };
    let out = core.step(NodeInput::MasterTokenAppeared(winner), 2_000);
    let sent = out.iter().any(|o| {
        matches!(o, NodeOutput::Send(Outgoing::Up(s, up))
            if *s == winner && matches!(&up.event, shoal_types::Event::NodeGatheredInfo { info, .. } if *info == fact))
    });
    assert!(sent, "resent to the new master: {out:?}");
}

/// The events a follower sends its master as its own facts.
fn facts_sent(out: &[NodeOutput]) -> Vec<NodeFact> {
    out.iter()
        .filter_map(|o| match o {
            NodeOutput::Send(Outgoing::Up(_, up)) => match &up.event {
                shoal_types::Event::NodeGatheredInfo { info, .. } => Some(info.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn a_node_whose_store_fails_says_so_in_state_and_says_so_again_when_it_recovers() {
    let mut core = NodeCore::new(NodeConfig::new(id(0x21), 7), State::empty(), 0, 0);
    let master = SessionId {
        term: 1,
        master: id(0x42),
    };
    core.step(NodeInput::MasterTokenAppeared(master), 10);
    let out = core.step(
        NodeInput::StorageFailed {
            error: DISK_FULL.into(),
            lost: Vec::new(),
        },
        20,
    );
    assert_eq!(
        facts_sent(&out),
        vec![NodeFact::StoreFault(Some(DISK_FULL.into()))],
        "placement must learn it: {out:?}"
    );
    let out = core.step(NodeInput::StorageRecovered, 30);
    assert_eq!(facts_sent(&out), vec![NodeFact::StoreFault(None)], "{out:?}");
}

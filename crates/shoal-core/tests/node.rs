//! The node core alone (no network): a lone node elects itself, asserts its facts once, and as master times out
//! nodes whose liveliness token is gone — only after its own grace period, and only after the 500 ms debounce.
#![allow(clippy::unwrap_used)]

use shoal_core::apply::apply_in_place;
use shoal_core::node::{MASTER_LIVENESS_GRACE_MS, NODE_LOSS_DEBOUNCE_MS, NodeConfig, NodeCore, NodeInput, NodeOutput};
use shoal_types::model::{Memory, NodeFact};
use shoal_types::{Event, IndexedEvent, NodeId, Pos, SessionId, State};

fn id(b: u8) -> NodeId {
    NodeId::from_bytes([b; 16])
}

fn indexed(outputs: &[NodeOutput]) -> Vec<Event> {
    outputs
        .iter()
        .filter_map(|o| match o {
            NodeOutput::Indexed(e) => Some(e.event.clone()),
            _ => None,
        })
        .collect()
}

/// Ticks every 10 ms from `from` to `to`, returning every event indexed meanwhile.
fn run(core: &mut NodeCore, from: u64, to: u64) -> Vec<Event> {
    let mut events = Vec::new();
    let mut t = from;
    while t <= to {
        events.extend(indexed(&core.step(NodeInput::Tick, t)));
        t += 10;
    }
    events
}

/// A State that already knows node `other` (as an older session recorded it).
fn state_knowing(other: NodeId) -> State {
    let mut state = State::empty();
    let session = SessionId { term: 1, master: other };
    let events = [
        Event::SessionOpened {
            session,
            base: Pos::EMPTY,
        },
        Event::NodeGatheredInfo {
            node: other,
            info: NodeFact::Memory(Memory { total: 8, available: 4 }),
        },
    ];
    for (idx, event) in events.into_iter().enumerate() {
        let e = IndexedEvent {
            idx: idx as u64,
            session,
            prev: state.pos.session,
            time_ms: 0,
            origin: None,
            event,
        };
        apply_in_place(&mut state, &e).unwrap();
    }
    state
}

#[test]
fn a_lone_node_elects_itself_and_asserts_each_fact_once() {
    let me = id(0x21);
    let mut core = NodeCore::new(NodeConfig::new(me, 7), State::empty(), 0, 0);
    let events = run(&mut core, 0, 1_500);
    assert!(core.master_of().is_some() && core.ready());
    assert!(matches!(events.as_slice(), [Event::SessionOpened { .. }]), "{events:?}");

    let fact = NodeFact::Memory(Memory {
        total: 10,
        available: 5,
    });
    let out = core.step(NodeInput::Facts(vec![fact.clone()]), 1_510);
    assert_eq!(indexed(&out).len(), 1, "the fact goes straight to the own indexer");
    assert!(indexed(&core.step(NodeInput::Facts(vec![fact]), 1_520)).is_empty());
    assert!(
        run(&mut core, 1_530, 6_000).is_empty(),
        "nothing to re-assert while State holds the fact"
    );
}

#[test]
fn a_node_without_a_token_is_timed_out_after_the_grace() {
    let me = id(0x21);
    let other = id(0x42);
    let mut core = NodeCore::new(NodeConfig::new(me, 7), state_knowing(other), 1, 0);
    let until_master = run(&mut core, 0, 1_500);
    assert!(core.master_of().is_some());
    assert!(
        !until_master.iter().any(|e| matches!(e, Event::NodeTimedOut { .. })),
        "no time-out before the grace"
    );
    let later = run(&mut core, 1_510, 1_000 + MASTER_LIVENESS_GRACE_MS + 600);
    assert!(
        later
            .iter()
            .any(|e| matches!(e, Event::NodeTimedOut { node, .. } if *node == other)),
        "{later:?}"
    );
    assert!(!core.state().nodes.contains_key(&other));
}

#[test]
fn a_live_node_is_kept_and_a_lost_one_goes_after_the_debounce() {
    let me = id(0x21);
    let other = id(0x42);
    let mut core = NodeCore::new(NodeConfig::new(me, 7), state_knowing(other), 1, 0);
    core.step(NodeInput::NodeTokenAppeared(other), 0);
    let events = run(&mut core, 0, 5_000);
    assert!(!events.iter().any(|e| matches!(e, Event::NodeTimedOut { .. })));
    core.step(NodeInput::NodeTokenGone(other), 5_005);
    let soon = run(&mut core, 5_010, 5_005 + NODE_LOSS_DEBOUNCE_MS - 20);
    assert!(soon.is_empty(), "{soon:?}");
    let after = run(
        &mut core,
        5_005 + NODE_LOSS_DEBOUNCE_MS,
        5_005 + NODE_LOSS_DEBOUNCE_MS + 100,
    );
    assert!(
        matches!(after.as_slice(), [Event::NodeTimedOut { node, .. }] if *node == other),
        "{after:?}"
    );
}

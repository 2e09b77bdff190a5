//! The State invariants I1–I6 of SYSTEM.md §3.1, as checks that tests (and debug assertions) run after every event.

use shoal_types::State;

/// Checks I1–I5 on one State; the error names the invariant and the entity.
pub fn check_invariants(s: &State) -> Result<(), String> {
    for (runner_id, r) in &s.runners {
        match s.instances.get(&r.instance) {
            Some(i) if i.assigns(runner_id, &r.node) => {}
            Some(_) => return Err(format!("I1: runner {runner_id} is not assigned to node {}", r.node)),
            None => return Err(format!("I1: runner {runner_id} has no instance {}", r.instance)),
        }
    }
    for (task_id, t) in &s.tasks {
        if !t.status.is_terminal() && !s.instances.contains_key(&t.instance) {
            return Err(format!("I2: unfinished task {task_id} has no instance {}", t.instance));
        }
        if s.task_by_command.get(&t.command_id) != Some(task_id) {
            return Err(format!(
                "I4: task {task_id} is not indexed by its command {}",
                t.command_id
            ));
        }
    }
    for (instance_id, i) in &s.instances {
        if let Some(node) = i.nodes().find(|n| !s.nodes.contains_key(*n)) {
            return Err(format!("I3: instance {instance_id} names unknown node {node}"));
        }
    }
    for (command_id, task_id) in &s.task_by_command {
        match s.tasks.get(task_id) {
            Some(t) if t.command_id == *command_id => {}
            _ => {
                return Err(format!(
                    "I4: command {command_id} indexes missing or foreign task {task_id}"
                ));
            }
        }
    }
    for (deployment_id, d) in &s.deployments {
        if let Some(instance_id) = d.instance {
            match s.instances.get(&instance_id) {
                Some(i) if i.deployment == Some(*deployment_id) => {}
                _ => {
                    return Err(format!(
                        "I5: deployment {deployment_id} points to foreign instance {instance_id}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks I6 across one transition: a terminal task status never changes.
pub fn check_transition(before: &State, after: &State) -> Result<(), String> {
    for (task_id, t) in &before.tasks {
        if t.status.is_terminal()
            && let Some(now) = after.tasks.get(task_id)
            && now.status != t.status
        {
            return Err(format!(
                "I6: terminal task {task_id} went from {:?} to {:?}",
                t.status, now.status
            ));
        }
    }
    Ok(())
}

//! The **pure** decision of a host's converge turn for its router: from the cluster's last good route table,
//! what the router serves, and whether etcd can be heard, what to do. Static stability lives here: while
//! etcd cannot be heard the answer is always "leave it", so the router keeps serving its last table.

use wire::RouteTable;

use crate::records::RoutesRecord;

/// What the host knows this turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterTurn<'a> {
    /// The last route table from etcd that passed its checks, if any arrived yet.
    pub desired: Option<&'a RoutesRecord>,
    /// What the router serves (None: it did not answer).
    pub serving: Option<&'a RouteTable>,
    /// Whether the host's last etcd call went through (false: unreachable or no quorum).
    pub etcd_ok: bool,
}

/// What to do with the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterStep {
    /// Put this table (the cluster's generation it carries, for the observed record).
    Put { generation: u64, table: RouteTable },
    /// It serves the cluster's table of this generation already.
    InSync { generation: u64 },
    /// Change nothing, and why.
    Leave(LeaveReason),
}

/// Why a host changes nothing on its router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// etcd cannot be heard: keep serving the last table (static stability).
    EtcdUnavailable,
    /// No valid route table has been read from etcd yet.
    NoTable,
    /// The router did not answer: try again next turn.
    RouterUnreachable,
}

/// The same routing, whatever generation each side numbered it with.
fn same_routes(a: &RouteTable, b: &RouteTable) -> bool {
    a.releases == b.releases && a.cohorts == b.cohorts
}

/// One turn's decision.
pub fn plan_router(turn: &RouterTurn<'_>) -> RouterStep {
    if !turn.etcd_ok {
        return RouterStep::Leave(LeaveReason::EtcdUnavailable);
    }
    let Some(desired) = turn.desired else {
        return RouterStep::Leave(LeaveReason::NoTable);
    };
    let Some(serving) = turn.serving else {
        return RouterStep::Leave(LeaveReason::RouterUnreachable);
    };
    if same_routes(serving, &desired.table) {
        RouterStep::InSync {
            generation: desired.generation,
        }
    } else {
        RouterStep::Put {
            generation: desired.generation,
            table: desired.table.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Release;

    fn table(ids: &[&str], generation: u64) -> RouteTable {
        let mut t = RouteTable {
            generation,
            ..RouteTable::default()
        };
        t.releases = ids.iter().map(|id| Release::new(*id, 1)).collect();
        t
    }

    fn rec(ids: &[&str], generation: u64) -> RoutesRecord {
        RoutesRecord {
            format: 1,
            generation,
            table: table(ids, 0),
        }
    }

    #[test]
    fn etcd_unavailable_leaves_the_router_whatever_else_is_known() {
        let d = rec(&["v2"], 3);
        let s = table(&["v1"], 9);
        for (desired, serving) in [(Some(&d), Some(&s)), (None, Some(&s)), (Some(&d), None), (None, None)] {
            let turn = RouterTurn {
                desired,
                serving,
                etcd_ok: false,
            };
            assert_eq!(plan_router(&turn), RouterStep::Leave(LeaveReason::EtcdUnavailable));
        }
    }

    #[test]
    fn a_differing_table_is_put_and_generations_alone_do_not_count() {
        let d = rec(&["v2", "v1"], 3);
        let old = table(&["v1"], 9);
        let turn = RouterTurn {
            desired: Some(&d),
            serving: Some(&old),
            etcd_ok: true,
        };
        assert_eq!(
            plan_router(&turn),
            RouterStep::Put {
                generation: 3,
                table: d.table.clone()
            }
        );
        let same = table(&["v2", "v1"], 17);
        let turn = RouterTurn {
            desired: Some(&d),
            serving: Some(&same),
            etcd_ok: true,
        };
        assert_eq!(plan_router(&turn), RouterStep::InSync { generation: 3 });
    }

    #[test]
    fn nothing_is_put_without_a_table_or_a_router() {
        let d = rec(&["v1"], 1);
        let s = table(&["v1"], 1);
        let no_table = RouterTurn {
            desired: None,
            serving: Some(&s),
            etcd_ok: true,
        };
        assert_eq!(plan_router(&no_table), RouterStep::Leave(LeaveReason::NoTable));
        let no_router = RouterTurn {
            desired: Some(&d),
            serving: None,
            etcd_ok: true,
        };
        assert_eq!(
            plan_router(&no_router),
            RouterStep::Leave(LeaveReason::RouterUnreachable)
        );
    }
}

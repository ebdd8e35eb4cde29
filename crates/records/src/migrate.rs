//! SQL migrations (wip)

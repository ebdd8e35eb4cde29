//! HTTP service (wip)

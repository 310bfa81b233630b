//! Scheduler unit tests against numbers printed by diffusers (tools/reference/scheduler_reference.py).

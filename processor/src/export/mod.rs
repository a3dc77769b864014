//! Sending telemetry out: OTLP traces and metrics, the trace printer.

//! The `AuditManager` custom resource: spec, status, defaults and validation rules.

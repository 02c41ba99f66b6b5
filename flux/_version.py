"""The version of Flux: one place, read by the face, the record export format, the OpenAPI
description, the extension header and OpenTelemetry's resource."""

__version__ = "0.1.0"

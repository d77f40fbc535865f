"""HTTP: the JSON API, the SSE event stream and (later) the cockpit pages."""

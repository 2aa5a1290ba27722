"""Tests of the HTTP API (`api/`): routes, auth, tenancy, limits, hostile input."""

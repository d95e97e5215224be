"""The deploy server: bundle store, release policies, push channels and the HTTP API."""

"""Host-framework aggregation: secure FedAvg of same-architecture SLM adapters (co-tuning)."""

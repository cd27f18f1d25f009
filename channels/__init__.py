"""Marketplace knowledge, one package per channel: webhook signatures, payload normalisation,
outbound inventory clients, order-list clients and a simulator of the channel's real API."""

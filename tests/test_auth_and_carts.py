"""The refusals of accounts on the wire, in each API's shape, and what the OpenAPI document
says of the token endpoint; against the live demo server."""

from __future__ import annotations

import uuid

import requests

SERVICES = "/nbia-api/services"


def test_a_cart_with_a_series_the_caller_cannot_see_is_refused(server):
    """A series the caller may not see is answered as one that does not exist: the cart is
    not made, and the name stays free."""
    name = f"cart-{uuid.uuid4().hex}"
    refused = requests.post(f"{server.url}{SERVICES}/createSharedList",
                            data={"list": "1.2.3.4.5.6.7.8.9", "name": name})
    assert (refused.status_code, refused.text) == (
        400, "User does not have permission for all series in list")
    assert server.commons.accounts.get_shared_list(name) is None


def test_a_bad_bearer_token_is_a_401_asking_for_a_bearer_token(server):
    idc = requests.get(f"{server.url}/v1/cohorts", headers={"Authorization": "Bearer nope"})
    assert idc.status_code == 401 and idc.headers["WWW-Authenticate"] == "Bearer"
    assert idc.json() == {"message": "Invalid or unknown token", "code": 401, "not_found": []}
    anonymous = requests.get(f"{server.url}/v1/cohorts")
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
    nbia = requests.get(f"{server.url}{SERVICES}/v4/getCollectionValues",
                        headers={"Authorization": "Bearer nope"})
    assert (nbia.status_code, nbia.text) == (401, "Invalid or unknown token")
    logout = requests.post(f"{server.url}/nbia-api/logout")
    assert (logout.status_code, logout.text) == (401, "Invalid or missing token")


def test_the_token_endpoint_is_described(server):
    spec = requests.get(f"{server.url}/openapi.json").json()
    for method in ("get", "post"):
        operation = spec["paths"]["/nbia-api/oauth/token"][method]
        query = {p["name"]: p["schema"] for p in operation["parameters"]}
        assert query["grant_type"]["enum"] == ["password", "refresh_token"]
        assert {"username", "password", "client_id", "refresh_token"} <= set(query)
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/TokenAnswer"}
    form = spec["paths"]["/nbia-api/oauth/token"]["post"]["requestBody"]["content"][
        "application/x-www-form-urlencoded"]["schema"]["properties"]
    assert form["grant_type"]["enum"] == ["password", "refresh_token"]
    answer = spec["components"]["schemas"]["TokenAnswer"]["properties"]
    token = requests.post(f"{server.url}/nbia-api/oauth/token",
                          data={"username": "nbia_guest", "password": "x"}).json()
    assert set(token) == set(answer)

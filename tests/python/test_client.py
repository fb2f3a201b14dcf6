"""An independent Python client of the public `vitrine.v1.Vitrine` service.

Every test talks to the router of a real local cluster (see conftest.py) with
stubs generated from proto/. Expected values are derived from the catalogue
below, never copied from a previous run.
"""

from __future__ import annotations

import re

import grpc
import pytest

from vitrine.v1 import vitrine_pb2 as pb

RPC_TIMEOUT_S = 30.0
UPSERT_TIMEOUT_S = 120.0  # the shards embed every title on the CPU

# id, category, brand, price, in_stock, tags, title, description
CATALOGUE = [
    # coffee: 8 products, so that a 3-item coffee history leaves 5 to recommend.
    ("py-001", "coffee", "Brevia", 349.0, True, ["espresso", "machine"],
     "Espresso Machine with Steam Wand",
     "Semi-automatic espresso machine with a 15 bar pump and a steam wand for frothing milk for lattes and cappuccinos."),
    ("py-002", "coffee", "Grindwell", 129.0, True, ["grinder", "espresso"],
     "Conical Burr Coffee Grinder",
     "Grinds coffee beans evenly with adjustable conical burrs, from fine espresso to coarse French press."),
    ("py-003", "coffee", "Pourfect", 79.5, True, ["kettle", "pour-over"],
     "Gooseneck Pour-Over Coffee Kettle",
     "Electric gooseneck kettle with temperature control for brewing pour-over coffee."),
    ("py-004", "coffee", "Brevia", 34.9, True, ["french-press"],
     "French Press Coffee Maker",
     "Glass and stainless steel French press that brews rich, full-bodied coffee in four minutes."),
    ("py-005", "coffee", "Roastery Nord", 24.0, True, ["beans", "dark-roast"],
     "Whole Bean Dark Roast Coffee",
     "One kilogram of dark roasted arabica coffee beans with notes of chocolate and caramel."),
    ("py-006", "coffee", "Pourfect", 19.99, False, ["milk", "frother"],
     "Milk Frother for Cappuccino and Latte",
     "Handheld milk frother that whips foam for cappuccinos, lattes and coffee drinks."),
    ("py-007", "coffee", "Roastery Nord", 42.0, True, ["cold-brew"],
     "Cold Brew Coffee Pitcher",
     "Pitcher with a fine mesh filter for steeping cold brew coffee overnight in the fridge."),
    ("py-008", "coffee", "Grindwell", 6.5, True, ["filters", "drip"],
     "Paper Coffee Filters for Drip Coffee Makers",
     "Pack of 200 unbleached paper filters for drip coffee makers and pour-over coffee cones."),
    # footwear
    ("py-009", "footwear", "Stridex", 139.0, True, ["running", "trail"],
     "Trail Running Shoes",
     "Lightweight running shoes with a grippy lugged outsole for muddy mountain trails."),
    ("py-010", "footwear", "Hartley", 189.0, True, ["boots", "leather"],
     "Leather Chelsea Boots",
     "Classic ankle boots in brown leather with elastic side panels."),
    ("py-011", "footwear", "Stridex", 159.0, False, ["running", "road"],
     "Cushioned Road Running Sneakers",
     "Neutral running sneakers with thick foam cushioning for marathon training on pavement."),
    ("py-012", "footwear", "Alpenweg", 210.0, True, ["boots", "hiking", "waterproof"],
     "Waterproof Hiking Boots",
     "Mid-cut hiking boots with a waterproof membrane and firm ankle support."),
    ("py-013", "footwear", "Hartley", 45.0, True, ["sneakers", "casual"],
     "Canvas Slip-On Sneakers",
     "Casual canvas sneakers with a rubber sole, easy to slip on and off."),
    ("py-014", "footwear", "Woolly", 39.0, True, ["slippers", "wool"],
     "Wool House Slippers",
     "Warm felted wool slippers for wearing around the house in winter."),
    # audio
    ("py-015", "audio", "Sonara", 299.0, True, ["headphones", "bluetooth", "anc"],
     "Noise Cancelling Wireless Headphones",
     "Over-ear Bluetooth headphones with active noise cancellation and 30 hours of battery life."),
    ("py-016", "audio", "Sonara", 149.0, True, ["earbuds", "bluetooth"],
     "True Wireless Earbuds",
     "Compact in-ear earbuds with a charging case, touch controls and Bluetooth 5.3."),
    ("py-017", "audio", "Boomly", 89.0, True, ["speaker", "bluetooth", "waterproof"],
     "Portable Bluetooth Speaker",
     "Waterproof portable speaker with deep bass for the beach or the pool."),
    ("py-018", "audio", "Vocalis", 119.0, True, ["microphone", "usb"],
     "USB Condenser Microphone",
     "Cardioid condenser microphone for podcasting, streaming and recording vocals."),
    ("py-019", "audio", "Spindle", 249.0, False, ["turntable", "vinyl"],
     "Vinyl Record Turntable",
     "Belt-drive turntable with a built-in phono preamp for playing vinyl records."),
    ("py-020", "audio", "Boomly", 399.0, True, ["speakers", "studio"],
     "Studio Monitor Speakers",
     "Pair of powered studio monitors for accurate mixing and music production."),
    # camping
    ("py-021", "camping", "Summit Co", 279.0, True, ["tent", "ultralight"],
     "Two-Person Backpacking Tent",
     "Ultralight dome tent for two people with a rain fly, for backpacking and camping trips."),
    ("py-022", "camping", "Summit Co", 229.0, True, ["sleeping-bag", "down"],
     "Down Mummy Sleeping Bag",
     "Mummy sleeping bag filled with goose down, rated to minus five degrees Celsius."),
    ("py-023", "camping", "Flintline", 59.0, True, ["stove", "gas"],
     "Backpacking Camp Stove",
     "Compact gas camping stove for cooking meals at the campsite."),
    ("py-024", "camping", "Flintline", 29.0, True, ["lantern", "led"],
     "LED Camping Lantern",
     "Rechargeable lantern that lights up the tent and campsite for twelve hours."),
    ("py-025", "camping", "Summit Co", 89.0, False, ["sleeping-pad"],
     "Inflatable Sleeping Pad",
     "Insulated air mattress pad for sleeping comfortably on the ground while camping."),
    # books
    ("py-026", "books", "Harbor Press", 14.99, True, ["mystery", "novel"],
     "The Lighthouse Murders: A Mystery Novel",
     "A detective unravels a string of murders in a remote coastal village."),
    ("py-027", "books", "Codeleaf", 39.99, True, ["programming", "python"],
     "Beginner's Guide to Python Programming",
     "Learn to write code in Python with hands-on exercises and small projects."),
    ("py-028", "books", "Harbor Press", 49.0, True, ["atlas", "maps"],
     "Illustrated Atlas of the World",
     "Large-format atlas with detailed maps of every country and continent."),
    ("py-029", "books", "Greenleaf", 24.5, True, ["cookbook", "vegetarian"],
     "Vegetarian Cookbook for Weeknights",
     "One hundred quick vegetarian recipes for busy evenings."),
    ("py-030", "books", "Starlit", 17.99, True, ["science-fiction", "novel"],
     "Stars of Andromeda: A Science Fiction Epic",
     "A space opera about a starship crew exploring the edge of the galaxy."),
]

BY_ID = {row[0]: row for row in CATALOGUE}
CATEGORY = {row[0]: row[1] for row in CATALOGUE}


def make_item(row) -> pb.Item:
    id_, category, brand, price, in_stock, tags, title, description = row
    return pb.Item(
        id=id_,
        title=title,
        description=description,
        attributes=pb.Attributes(
            category=category, brand=brand, price=price, in_stock=in_stock, tags=tags
        ),
    )


def rpc_error(call, request, **kwargs) -> grpc.RpcError:
    """Runs an RPC that must fail and returns its error."""
    with pytest.raises(grpc.RpcError) as exc:
        call(request, timeout=RPC_TIMEOUT_S, **kwargs)
    return exc.value


def assert_descending(hits) -> None:
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True), f"scores not descending: {scores}"


def assert_full_coverage(resp, shards: int = 2) -> None:
    cov = resp.coverage
    assert cov.shards_asked == shards, cov
    assert cov.shards_answered == shards, cov
    assert cov.degraded is False, cov


@pytest.fixture(scope="module")
def stub(cluster):
    return cluster.stub


@pytest.fixture(scope="module")
def catalogue(stub):
    """Upserts the catalogue once; yields the UpsertItemsResponse."""
    resp = stub.UpsertItems(
        pb.UpsertItemsRequest(items=[make_item(r) for r in CATALOGUE]),
        timeout=UPSERT_TIMEOUT_S,
    )
    return resp


@pytest.fixture(scope="module")
def dimension(stub, catalogue):
    info = stub.ClusterInfo(pb.ClusterInfoRequest(), timeout=RPC_TIMEOUT_S)
    assert info.dimension > 0, info
    return info.dimension


def test_cluster_info(stub, catalogue):
    info = stub.ClusterInfo(pb.ClusterInfoRequest(), timeout=RPC_TIMEOUT_S)
    assert_full_coverage(info)
    assert len(info.shards) == 2
    assert all(s.state == pb.SHARD_STATE_SERVING for s in info.shards), info
    assert sum(s.items for s in info.shards) == len(CATALOGUE), info
    assert all(s.dimension == info.dimension for s in info.shards), info


def test_upsert_and_get(stub, catalogue):
    assert catalogue.upserted == len(CATALOGUE)
    assert catalogue.embedded == len(CATALOGUE)

    ids = [r[0] for r in CATALOGUE]
    missing_id = "py-does-not-exist"
    resp = stub.GetItems(
        pb.GetItemsRequest(ids=ids[:15] + [missing_id] + ids[15:]), timeout=RPC_TIMEOUT_S
    )
    assert list(resp.missing) == [missing_id]
    assert [it.id for it in resp.items] == ids, "items not returned in request order"
    for it in resp.items:
        id_, category, brand, price, in_stock, tags, title, description = BY_ID[it.id]
        assert it.title == title
        assert it.description == description
        a = it.attributes
        assert a.category == category, it.id
        assert a.brand == brand, it.id
        assert a.HasField("price") and a.price == pytest.approx(price), it.id
        assert a.HasField("in_stock") and a.in_stock == in_stock, it.id
        assert list(a.tags) == tags, it.id
        assert not it.HasField("vector"), "vector returned without with_vectors"
        assert it.image == b""


@pytest.mark.parametrize("id_", [f"py-{n:03d}" for n in range(1, 31, 3)])
def test_search_by_exact_title(stub, catalogue, id_):
    title = BY_ID[id_][6]
    resp = stub.Search(pb.SearchRequest(text=title, k=5), timeout=RPC_TIMEOUT_S)
    assert_full_coverage(resp)
    assert len(resp.hits) == 5
    assert resp.hits[0].id == id_, [(h.id, round(h.score, 4)) for h in resp.hits]
    assert_descending(resp.hits)
    assert len({h.id for h in resp.hits}) == len(resp.hits), "duplicate hits"


def test_search_with_filter(stub, catalogue):
    max_price = 50.0
    flt = pb.Filter(
        **{
            "and": pb.FilterList(
                filters=[
                    pb.Filter(match=pb.Match(field="category", any_of=["coffee"])),
                    pb.Filter(range=pb.Range(field="price", lte=max_price)),
                ]
            )
        }
    )
    resp = stub.Search(
        pb.SearchRequest(text="coffee brewing at home", k=len(CATALOGUE), filter=flt, with_items=True),
        timeout=RPC_TIMEOUT_S,
    )
    assert_full_coverage(resp)
    assert_descending(resp.hits)
    for h in resp.hits:
        assert h.item.id == h.id
        assert h.item.attributes.category == "coffee", h
        assert h.item.attributes.HasField("price") and h.item.attributes.price <= max_price, h
    # k exceeds the catalogue, so every matching item must come back.
    expected = {r[0] for r in CATALOGUE if r[1] == "coffee" and r[3] <= max_price}
    assert expected, "catalogue has no item matching the filter"
    assert {h.id for h in resp.hits} == expected


def test_search_by_vector(stub, catalogue, dimension):
    id_ = "py-017"
    got = stub.GetItems(pb.GetItemsRequest(ids=[id_], with_vectors=True), timeout=RPC_TIMEOUT_S)
    assert [it.id for it in got.items] == [id_]
    vec = list(got.items[0].vector.values)
    assert len(vec) == dimension
    assert sum(v * v for v in vec) == pytest.approx(1.0, abs=1e-3), "stored vector not normalised"

    resp = stub.Search(pb.SearchRequest(vector=pb.Vector(values=vec), k=3), timeout=RPC_TIMEOUT_S)
    assert_full_coverage(resp)
    assert resp.hits[0].id == id_, [(h.id, h.score) for h in resp.hits]
    assert resp.hits[0].score > 0.99
    assert_descending(resp.hits)


def test_recommend_from_history(stub, catalogue):
    history = ["py-001", "py-002", "py-003"]
    category = CATEGORY[history[0]]
    assert all(CATEGORY[h] == category for h in history)

    resp = stub.Recommend(pb.RecommendRequest(history=history, k=5, with_items=True), timeout=RPC_TIMEOUT_S)
    assert_full_coverage(resp)
    ids = [h.id for h in resp.hits]
    assert len(ids) == 5, ids
    assert not set(ids) & set(history), f"seen items recommended: {ids}"
    assert_descending(resp.hits)
    for h in resp.hits:
        assert h.item.attributes.category == CATEGORY[h.id]
    same = [i for i in ids if CATEGORY[i] == category]
    assert len(same) > len(ids) / 2, f"top-5 {ids} has only {len(same)} '{category}' items"

    small = stub.Recommend(pb.RecommendRequest(history=history, k=2), timeout=RPC_TIMEOUT_S)
    assert len(small.hits) == 2
    assert not {h.id for h in small.hits} & set(history)


def test_record_events_then_recommend_for_user(stub, catalogue):
    user = "py-user-audio"
    events = [
        pb.Event(user_id=user, item_id="py-015", type=pb.EVENT_TYPE_VIEW),
        pb.Event(user_id=user, item_id="py-016", type=pb.EVENT_TYPE_VIEW),
        pb.Event(user_id=user, item_id="py-017", type=pb.EVENT_TYPE_PURCHASE),
    ]
    resp = stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=RPC_TIMEOUT_S)
    assert resp.recorded == len(events)

    seen = {e.item_id for e in events}
    rec = stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=RPC_TIMEOUT_S)
    assert_full_coverage(rec)
    ids = [h.id for h in rec.hits]
    assert len(ids) == 10, ids
    assert not set(ids) & seen, f"seen items recommended: {ids}"
    assert_descending(rec.hits)


def test_behavioural_signals_explained_and_optional_fields(stub, catalogue):
    # A neighbour from another category, taught through UpdateSignals, joins
    # the recommendations and is explained; proto3 `optional` ranking fields
    # work.
    anchor, partner = "py-001", next(i for i in CATEGORY if CATEGORY[i] != CATEGORY["py-001"])
    sig = pb.ItemSignals(id=anchor, neighbours=[pb.Neighbour(id=partner, weight=4.0)], popularity=0.3)
    assert stub.UpdateSignals(pb.UpdateSignalsRequest(signals=[sig]), timeout=RPC_TIMEOUT_S).updated == 1
    ranking = pb.Ranking(explore_epsilon=0.0, feedback=0.0)
    resp = stub.Recommend(
        pb.RecommendRequest(history=[anchor], k=3, explain=True, ranking=ranking), timeout=RPC_TIMEOUT_S
    )
    hit = next((h for h in resp.hits if h.id == partner), None)
    assert hit is not None, [h.id for h in resp.hits]
    assert hit.explanation.source == "behaviour" and hit.explanation.because_of == anchor
    assert hit.explanation.behaviour > 0 and hit.propensity == 1.0
    no_behaviour = pb.Ranking(behaviour=0.0, explore_epsilon=0.0, feedback=0.0)
    assert no_behaviour.HasField("behaviour")
    resp = stub.Recommend(pb.RecommendRequest(history=[anchor], k=3, ranking=no_behaviour), timeout=RPC_TIMEOUT_S)
    assert partner not in [h.id for h in resp.hits]
    # Clear the signal again so other tests see the plain catalogue.
    stub.UpdateSignals(pb.UpdateSignalsRequest(signals=[pb.ItemSignals(id=anchor)]), timeout=RPC_TIMEOUT_S)


# --- bad input --------------------------------------------------------------


def test_search_k_zero_is_invalid(stub, catalogue):
    err = rpc_error(stub.Search, pb.SearchRequest(text="coffee", k=0))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err


def test_upsert_empty_id_is_invalid_and_writes_nothing(stub, catalogue):
    good = pb.Item(id="py-bad-batch-good", title="A perfectly fine teapot",
                   attributes=pb.Attributes(category="coffee"))
    bad = pb.Item(id="", title="An item without an id")
    err = rpc_error(stub.UpsertItems, pb.UpsertItemsRequest(items=[good, bad]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert re.search(r"\bid\b", err.details() or "", re.IGNORECASE), (
        f"message does not mention the id: {err.details()!r}"
    )
    got = stub.GetItems(pb.GetItemsRequest(ids=[good.id]), timeout=RPC_TIMEOUT_S)
    assert list(got.missing) == [good.id], "a rejected batch was partly written"


def test_wrong_dimension_vector_is_invalid(stub, catalogue, dimension):
    wrong = pb.Vector(values=[0.1] * (dimension + 1))
    err = rpc_error(stub.Search, pb.SearchRequest(vector=wrong, k=3))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err

    item = pb.Item(id="py-bad-dim", title="Vector of the wrong size", vector=wrong)
    err = rpc_error(stub.UpsertItems, pb.UpsertItemsRequest(items=[item]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    got = stub.GetItems(pb.GetItemsRequest(ids=[item.id]), timeout=RPC_TIMEOUT_S)
    assert list(got.missing) == [item.id]

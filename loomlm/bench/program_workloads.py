"""The four workloads of `python -m loomlm.bench programs`, as `@function` programs with their inputs.

They follow the SGLang paper's program benchmarks, scaled for a small CPU; every text is written for
this benchmark (no dataset is downloaded):

- few-shot: MMLU-style 5-shot multiple choice (SGLang's `few_shot_mmlu`: shots + question + a 1-token
  gen, or a select over " A".." D"); the shots are bound with `.bind`, so `run_batch` traces them as
  the constant prefix of every question.
- tree-of-thought: a math word problem solved in three stages (plan, compute, check), forking 2 ways
  at each stage: 2 plans, 4 solutions, 8 checks per problem. Under greedy decoding two branches that
  see the same text would write the same thing, so each branch starts its answer with its own short
  lead-in (work forwards / backwards, ...).
- multi-turn chat: conversations of several turns under one long shared system prompt (a shop's
  support assistant with its policies).
- JSON extraction: a record (pydantic model) extracted from each of several short documents, with a
  shared instruction and one worked example; the gen is constrained by the model's JSON schema.

Free-text gens take their length from `run_batch`'s sampling defaults (`max_new_tokens`, with
`ignore_eos`), so every backend generates the same number of tokens; the few-shot answer is one
token and the JSON record ends where its schema's object closes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from loomlm.lang.api import assistant, gen, select, system, user
from loomlm.lang.function import SglFunction, function

# ---- few-shot (MMLU style) ------------------------------------------------------------------------
MMLU_HEADER = "The following are multiple choice questions (with answers) about high school science.\n\n"
LETTERS = ("A", "B", "C", "D")

# (question, options A-D, answer): the five shots, longer questions as in MMLU's dev sets.
SHOTS = (
    (
        "A student places a sealed plastic bottle of air in a freezer overnight. In the morning the sides of the "
        "bottle are pressed inward. Which statement best explains the change?",
        (
            "The air molecules became smaller in the cold.",
            "The pressure of the cooled air inside fell below the pressure outside.",
            "Air leaked out through the plastic overnight.",
            "The plastic shrank faster than the air inside it.",
        ),
        "B",
    ),
    (
        "A farmer notices that a field planted with the same crop for many years gives smaller harvests, while a "
        "neighbouring field that alternates beans and wheat does not. Which process most likely explains the "
        "difference?",
        (
            "Beans add nitrogen to the soil through bacteria in their root nodules.",
            "Wheat releases chemicals that poison other plants.",
            "Alternating crops increases the amount of sunlight reaching the soil.",
            "Beans absorb water that would otherwise flood the field.",
        ),
        "A",
    ),
    (
        "A ball is dropped from rest from the top of a building and reaches the ground 3 seconds later. Ignoring "
        "air resistance and taking g = 10 m/s^2, how tall is the building?",
        ("15 m", "30 m", "45 m", "90 m"),
        "C",
    ),
    (
        "In a population of rabbits, fur colour is controlled by one gene with two alleles; brown (B) is dominant "
        "over white (b). Two brown rabbits that are both heterozygous are crossed. What fraction of their "
        "offspring is expected to be white?",
        ("0", "1/4", "1/2", "3/4"),
        "B",
    ),
    (
        "Which of the following best describes why coastal cities usually have milder winters than inland cities "
        "at the same latitude?",
        (
            "Ocean water has a high specific heat and releases stored heat slowly.",
            "Coastal cities receive more hours of sunlight in winter.",
            "Winds over the ocean always blow from the equator.",
            "Salt in the air lowers the freezing point of the atmosphere.",
        ),
        "A",
    ),
)

QUESTIONS = (
    ("Which gas makes up most of the Earth's atmosphere?", ("Oxygen", "Nitrogen", "Carbon dioxide", "Argon"), "B"),
    (
        "What is the main function of red blood cells?",
        ("Fighting infection", "Carrying oxygen", "Clotting blood", "Producing hormones"),
        "B",
    ),
    ("Which planet is closest to the Sun?", ("Venus", "Earth", "Mercury", "Mars"), "C"),
    ("What is the chemical symbol for sodium?", ("S", "So", "Sd", "Na"), "D"),
    ("Which type of rock forms when lava cools and hardens?", ("Igneous", "Sedimentary", "Metamorphic", "Fossil"), "A"),
    (
        "A car travels 150 km in 2.5 hours. What is its average speed?",
        ("50 km/h", "60 km/h", "75 km/h", "90 km/h"),
        "B",
    ),
    (
        "Which organelle carries out photosynthesis in plant cells?",
        ("Mitochondrion", "Nucleus", "Ribosome", "Chloroplast"),
        "D",
    ),
    ("What is the pH of pure water at 25 degrees Celsius?", ("5", "7", "9", "14"), "B"),
    ("Which force keeps the planets in orbit around the Sun?", ("Magnetism", "Friction", "Gravity", "Tension"), "C"),
    ("What is the boiling point of water at sea level, in degrees Celsius?", ("90", "100", "110", "120"), "B"),
    ("Which part of a plant absorbs most of the water from the soil?", ("Leaves", "Stem", "Roots", "Flowers"), "C"),
    ("How many chromosomes are in a typical human body cell?", ("23", "44", "46", "48"), "C"),
    ("Which of these is a renewable source of energy?", ("Coal", "Natural gas", "Wind", "Oil"), "C"),
    (
        "What kind of energy does a stretched rubber band store?",
        ("Elastic potential energy", "Thermal energy", "Chemical energy", "Nuclear energy"),
        "A",
    ),
    (
        "Which layer of the Earth lies directly beneath the crust?",
        ("Inner core", "Outer core", "Mantle", "Atmosphere"),
        "C",
    ),
    ("What is produced when hydrogen burns in oxygen?", ("Carbon dioxide", "Water", "Ammonia", "Methane"), "B"),
    (
        "A resistor has 6 volts across it and 2 amperes through it. What is its resistance?",
        ("3 ohms", "4 ohms", "8 ohms", "12 ohms"),
        "A",
    ),
    (
        "Which blood vessels carry blood away from the heart?",
        ("Veins", "Arteries", "Capillaries", "Lymph vessels"),
        "B",
    ),
    (
        "What causes the seasons on Earth?",
        ("The changing distance to the Sun", "The tilt of Earth's axis", "The phases of the Moon", "Ocean currents"),
        "B",
    ),
    ("Which element has the atomic number 6?", ("Oxygen", "Nitrogen", "Carbon", "Helium"), "C"),
    (
        "In which state of matter are the particles closest together and fixed in place?",
        ("Solid", "Liquid", "Gas", "Plasma"),
        "A",
    ),
    (
        "What is the role of decomposers in an ecosystem?",
        (
            "They make food from sunlight",
            "They break down dead matter and recycle nutrients",
            "They hunt herbivores",
            "They pollinate flowers",
        ),
        "B",
    ),
    (
        "Which instrument is used to measure air pressure?",
        ("Thermometer", "Barometer", "Anemometer", "Hygrometer"),
        "B",
    ),
    (
        "What is the approximate speed of light in a vacuum?",
        ("300 km/s", "3,000 km/s", "300,000 km/s", "3,000,000 km/s"),
        "C",
    ),
    (
        "Which process turns liquid water into water vapour?",
        ("Condensation", "Evaporation", "Freezing", "Precipitation"),
        "B",
    ),
    ("Which simple machine is a ramp?", ("Lever", "Pulley", "Inclined plane", "Wheel and axle"), "C"),
    ("Which gas do plants take in for photosynthesis?", ("Oxygen", "Nitrogen", "Carbon dioxide", "Hydrogen"), "C"),
    ("Which of these animals is a mammal?", ("Shark", "Dolphin", "Trout", "Octopus"), "B"),
    ("What is the unit of electric charge?", ("Volt", "Watt", "Coulomb", "Ohm"), "C"),
    (
        "Which of the following is a chemical change?",
        ("Melting ice", "Cutting paper", "Rusting iron", "Dissolving sugar"),
        "C",
    ),
    ("A 2 kg object accelerates at 3 m/s^2. What net force acts on it?", ("1.5 N", "5 N", "6 N", "9 N"), "C"),
    ("Which organ produces insulin?", ("Liver", "Pancreas", "Kidney", "Stomach"), "B"),
)


def format_question(question: str, options: tuple[str, ...], answer: str | None = None) -> str:
    text = question + "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, options)) + "\nAnswer:"
    return text if answer is None else f"{text} {answer}\n\n"


FEW_SHOT_EXAMPLES = MMLU_HEADER + "".join(format_question(*shot) for shot in SHOTS)


@function
def few_shot_gen(s, examples, question):
    s += examples
    s += question
    s += gen("answer", max_tokens=1)


@function
def few_shot_select(s, examples, question):
    s += examples
    s += question
    s += select("answer", choices=[" " + letter for letter in LETTERS])


# ---- tree of thought -------------------------------------------------------------------------------
TOT_SYSTEM = "You are a careful math tutor. You solve word problems in three stages: plan, compute, check."
PROBLEMS = (
    "A bakery sells muffins for $3 each and cookies for $1.50 each. On Monday it sold 42 muffins and twice as "
    "many cookies. How much money did it take in from muffins and cookies together?",
    "A train leaves at 9:40 and travels 210 km at an average speed of 84 km/h. At what time does it arrive?",
    "A water tank holds 1,200 litres. A pipe fills it at 40 litres per minute while a leak drains 15 litres per "
    "minute. Starting from empty, how many minutes until the tank is full?",
    "A shop discounts an $80 jacket by 25% and then adds 10% sales tax to the discounted price. How much does "
    "the customer pay?",
    "Three friends share the cost of a $96 dinner; one friend pays twice as much as each of the other two. How "
    "much does that friend pay?",
    "A rectangle's length is 3 cm more than twice its width, and its perimeter is 42 cm. What is its area?",
    "A cyclist rides 12 km in 40 minutes and then 9 km in 20 minutes. What is her average speed for the whole "
    "ride in km/h?",
    "Maria reads 18 pages on each weekday and 30 pages on each weekend day. How many full weeks does she need "
    "to finish a 612-page book?",
)
# Per stage: the user's request, and the two branches' lead-ins to the assistant's answer.
PLAN_ASK = (
    "First, propose a short plan: which quantities will you compute, and in which order? Do not do the arithmetic yet."
)
PLAN_LEADS = ("Plan, working forwards from the given numbers:", "Plan, working backwards from the question:")
SOLVE_ASK = (
    "The plan looks good. Now carry it out with the actual numbers, step by step, and state the "
    "final answer on the last line."
)
SOLVE_LEADS = ("Step 1:", "Let me first write the whole calculation as one expression.")
CHECK_ASK = (
    "Check the solution rigorously: redo each calculation, point out any mistake, and rate the solution from 1 to 5."
)
CHECK_LEADS = ("Recomputing each step:", "Checking whether the answer is reasonable:")
TOT_WIDTH = 2  # branches per fork; three stages -> 2, 4 and 8 gens per problem


def _branch(states: list, ask: str, leads: tuple[str, ...], var: str) -> list:
    """Ask every state the stage's question, then fork each into one branch per lead-in; breadth first,
    so all branches of a stage are generating before any is waited on."""
    for state in states:
        state += user(ask)
    children = []
    for state in states:
        forks = state.fork(TOT_WIDTH)
        forks += lambda i: assistant(leads[i] + gen(var))
        children += list(forks)
    return children


@function
def tree_of_thought(s, problem):
    s += system(TOT_SYSTEM)
    with s.user():
        s += "Solve the following word problem.\n\n"
        s += problem
        s += "\n\n" + PLAN_ASK
    plans = s.fork(TOT_WIDTH)
    plans += lambda i: assistant(PLAN_LEADS[i] + gen("plan"))
    solutions = _branch(list(plans), SOLVE_ASK, SOLVE_LEADS, "solution")
    checks = _branch(solutions, CHECK_ASK, CHECK_LEADS, "check")
    s["checks"] = [c["check"] for c in checks]  # waits for every leaf


# ---- multi-turn chat -------------------------------------------------------------------------------
CHAT_SYSTEM = (
    "You are Sam, the customer support assistant of Northwind Cycles, a bicycle shop with two stores (Harbour "
    "Street and Mill Lane) and an online store.\n"
    "Opening hours: Monday to Friday 9:00-18:00, Saturday 10:00-16:00, closed on Sunday. The Mill Lane store "
    "stays open until 20:00 on Thursdays.\n"
    "Workshop: basic tune-up 45 euros, full tune-up 95 euros, wheel truing 25 euros, tyre or tube fitting 10 "
    "euros plus parts, e-bike diagnostics 40 euros. Repairs normally take two working days; same-day express "
    "service costs 20 euros extra when the workshop has room. Customers book by phone or on the website.\n"
    "Returns: unused items can be returned within 30 days with the receipt for a full refund, in a store or "
    "by post; refunds reach the customer's account within 5 working days. Bikes that have been ridden can be "
    "exchanged within 14 days if undamaged. Sale items are final.\n"
    "Warranty: frames have a lifetime warranty for the original owner; components two years; e-bike batteries "
    "two years or 500 charge cycles, whichever comes first. Crash damage is not covered.\n"
    "Delivery: online orders over 50 euros ship free within the Netherlands, Belgium and Germany and arrive in "
    "2-4 working days; express delivery (1 working day) costs 12 euros. Bikes arrive 90% assembled, with the "
    "tools needed to finish them.\n"
    "Payment: cards, bank transfer, and interest-free finance over 12 months for bikes above 500 euros.\n"
    "Stores: Harbour Street 14 has the workshop, the e-bike test track and free parking for customers; Mill "
    "Lane 3 is smaller, sells clothing, helmets, locks and parts, and takes repairs that it sends on to "
    "Harbour Street. Online orders can be collected in either store from the next working day.\n"
    "Bike fitting: a 60-minute fitting costs 80 euros, or 40 euros when booked together with a bike purchase; "
    "it includes saddle height, reach and cleat adjustment.\n"
    "Rentals: city bikes 15 euros a day, e-bikes 35 euros a day, child seats and trailers 8 euros a day; an ID "
    "card and a 100 euro deposit are required; rentals are collected and returned at Harbour Street.\n"
    "Trade-in: customers buying a new bike can trade in a used adult bike in working order for store credit, "
    "valued by the workshop on the spot; bikes with frame damage are not accepted.\n"
    "Children's bikes: sizes go by inside-leg length, not only age; children under 12 must wear a helmet on our "
    "test track, and we recommend lights, a bell and a reflective vest for riding to school.\n"
    "Gift cards: sold in any amount from 10 euros, valid for three years, usable in stores and online.\n"
    "Privacy: never ask for full card numbers or passwords; to look up an order, the order number and the "
    "customer's postcode are enough.\n"
    "Style: answer in two to four short sentences, be friendly and concrete, quote prices in euros, never "
    "invent a policy that is not listed here, and offer to book a workshop slot when a repair comes up. If you "
    "do not know something, say so and offer to pass the question to a colleague."
)
CONVERSATIONS = (
    (
        "Hi, are you open on Sunday?",
        "OK, what about Thursday evening?",
        "Can I get my brakes checked then?",
        "How much is a full tune-up?",
    ),
    (
        "I bought a helmet last week but it doesn't fit.",
        "I haven't worn it outside and I still have the box.",
        "Can I send it back by post?",
        "How long until I get the money back?",
    ),
    (
        "My e-bike battery only lasts half as long as it used to.",
        "It's about 18 months old.",
        "Do I need to bring the whole bike?",
        "What does the diagnostic cost?",
    ),
    (
        "Do you deliver bikes to Antwerp?",
        "Is the bike fully assembled when it arrives?",
        "What tools will I need?",
        "Can I pay in instalments?",
    ),
    (
        "My rear wheel wobbles when I ride.",
        "Is that expensive to fix?",
        "I need the bike back by tomorrow for work.",
        "Great, can you book me in for Friday morning?",
    ),
    (
        "I crashed my carbon road bike and the frame has a crack.",
        "But I thought frames had a lifetime warranty?",
        "What would you recommend then?",
        "Do you sell frames on their own?",
    ),
    (
        "I'm looking for a bike for my daughter, she is 9.",
        "She'll ride mostly to school, about 3 km each way.",
        "What else should she have for safety?",
        "Can we try some bikes at Harbour Street on Saturday?",
    ),
    (
        "I ordered tyres online five days ago and nothing has arrived.",
        "The order number is NW-20417.",
        "I paid for express delivery, though.",
        "Can I get the express fee refunded?",
    ),
)


@function
def support_chat(s, messages):
    s += system(CHAT_SYSTEM)
    for i, message in enumerate(messages):
        s += user(message)
        s += assistant(gen(f"reply{i}"))


# ---- JSON extraction -------------------------------------------------------------------------------
class Venue(BaseModel):
    name: str = Field(max_length=40)
    city: str = Field(max_length=24)
    kind: Literal["restaurant", "museum", "park", "theatre", "hotel", "library", "market", "gallery"]
    opened: int = Field(ge=1500, le=2030)
    rating: int = Field(ge=1, le=5)
    free_entry: bool


JSON_SYSTEM = (
    "You extract structured records from short descriptions of places. Reply with one JSON object and nothing "
    "else. Fields: name (the venue's name), city, kind (one of restaurant, museum, park, theatre, hotel, "
    "library, market, gallery), opened (the year it first opened), rating (the average rating in stars out of "
    "5, as an integer) and free_entry (true when a visit costs nothing, false otherwise). The object must "
    "validate against this JSON schema:\n" + json.dumps(Venue.model_json_schema())
)
JSON_EXAMPLE_DOC = (
    "The Rosenhagen Botanical Garden on the east bank of the Weser in Bremen was laid out in 1905 around a "
    "pond and two glasshouses of tropical plants. Adults pay 5 euros, children go in free. Visitors give it 4 "
    "stars out of 5."
)
JSON_EXAMPLE = Venue(
    name="Rosenhagen Botanical Garden", city="Bremen", kind="park", opened=1905, rating=4, free_entry=False
)
DOCUMENTS = (
    "The Lindqvist Maritime Museum sits on the old harbour front of Gothenburg. It opened its doors in 1933 in "
    "a former rope factory and today shows ship models, navigation instruments and a restored fishing boat. "
    "Entry is free. Visitors rate it 4 stars out of 5, mostly for the rooftop view of the docks.",
    "Casa Robles is a family restaurant in the Ruzafa district of Valencia, founded in 1987 by two brothers "
    "from Xativa. The menu is built around rice dishes cooked over orange wood. Reviewers give it 5 out of 5 "
    "stars; you will need to book a table.",
    "Opened in 1871, Fernhill Park covers forty hectares on the northern edge of Leeds. It has a boating lake, "
    "a Victorian glasshouse and a small cafe by the bandstand. The park is open to everyone at no charge and "
    "holds an average rating of 4 out of 5.",
    "The Orpheum Theatre in Lyon was built in 1912 for touring opera companies and restored after a fire in "
    "1998. Tickets for its evening performances start at 18 euros. Audience reviews average 3 stars out of 5, "
    "with complaints about the narrow seats.",
    "Hotel Aurora is a sixty-room hotel next to the central station in Tampere, opened in 2016. Rooms include "
    "breakfast and a sauna session and are paid for in advance. Guests give it 4 out of 5 on average.",
    "The Kettle Street Library in Dundee has lent books since 1906 and was extended with a glass reading room "
    "in 2011. Membership and entry are free for everyone. Its local-history collection earns it a rating of 5 "
    "out of 5 from users.",
    "Mercado do Bolhao is the covered market of Porto, first opened in 1839 and reopened after a renovation in "
    "2022. Stalls sell fish, flowers and cured meats, and entry costs nothing. Visitors rate it 4 stars out "
    "of 5.",
    "Galerie Nord is a small contemporary art gallery in Kiel, opened in 1995 in a former post office. "
    "Exhibitions change every six weeks and tickets cost 6 euros. Online reviews give it 3 out of 5.",
)


@function
def extract_venue(s, document, record_tokens):
    s += system(JSON_SYSTEM)
    s += user(JSON_EXAMPLE_DOC)
    s += assistant(JSON_EXAMPLE.model_dump_json())
    s += user(document)
    s += assistant(gen("record", json_schema=Venue, max_tokens=record_tokens, ignore_eos=False))


# ---- the workloads ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    key: str  # --workloads name
    title: str  # table label
    program: SglFunction
    arguments: list[dict[str, Any]]  # one dict per program run
    shape: str  # what one run of the program does, for the report
    score: Callable[[list[Any]], dict[str, Any]] | None = None  # quality figures from the final states
    # Extra sampling parameters of a short untimed gen before the timed run (a JSON schema: its grammar
    # compiles then, on every backend, and is not part of the program timings).
    warmup: tuple[dict[str, Any], ...] = ()


def _few_shot_score(states: list[Any], labels: list[str]) -> dict[str, Any]:
    answers = [str(st["answer"]).strip()[:1] for st in states]
    return {"accuracy": round(sum(a == b for a, b in zip(answers, labels)) / len(labels), 4)}


def _json_score(states: list[Any]) -> dict[str, Any]:
    valid = 0
    for st in states:
        try:
            Venue.model_validate(json.loads(st["record"]))
            valid += 1
        except ValueError:
            pass
    return {"valid_records": valid}


def few_shot_workload(questions: int = 32, answer: str = "gen") -> Workload:
    if not 1 <= questions <= len(QUESTIONS):
        raise ValueError(f"--questions must be in 1..{len(QUESTIONS)}, got {questions}")
    if answer not in ("gen", "select"):
        raise ValueError(f"--few-shot-answer must be gen or select, got {answer!r}")
    chosen = QUESTIONS[:questions]
    program = (few_shot_gen if answer == "gen" else few_shot_select).bind(examples=FEW_SHOT_EXAMPLES)
    labels = [q[2] for q in chosen]
    how = "gen of 1 token" if answer == "gen" else "select over A-D"
    return Workload(
        "few-shot",
        "few-shot (5-shot MC)",
        program,
        [{"question": format_question(q, opts)} for q, opts, _ in chosen],
        f"{questions} questions x ({len(SHOTS)} shots + question -> {how})",
        lambda states: _few_shot_score(states, labels),
    )


def tree_of_thought_workload(problems: int = 6) -> Workload:
    if not 1 <= problems <= len(PROBLEMS):
        raise ValueError(f"--tot-problems must be in 1..{len(PROBLEMS)}, got {problems}")
    return Workload(
        "tot",
        "tree of thought",
        tree_of_thought,
        [{"problem": p} for p in PROBLEMS[:problems]],
        f"{problems} problems x fork {TOT_WIDTH} x 3 levels (2+4+8 gens)",
    )


def chat_workload(conversations: int = 8, turns: int = 4) -> Workload:
    if not 1 <= conversations <= len(CONVERSATIONS) or not 1 <= turns <= len(CONVERSATIONS[0]):
        raise ValueError(
            f"--conversations must be in 1..{len(CONVERSATIONS)} and --turns in "
            f"1..{len(CONVERSATIONS[0])}, got {conversations}, {turns}"
        )
    return Workload(
        "chat",
        "multi-turn chat",
        support_chat,
        [{"messages": list(c[:turns])} for c in CONVERSATIONS[:conversations]],
        f"{conversations} conversations x {turns} turns, shared system prompt",
    )


def json_workload(documents: int = 8, max_tokens: int = 96) -> Workload:
    if not 1 <= documents <= len(DOCUMENTS):
        raise ValueError(f"--documents must be in 1..{len(DOCUMENTS)}, got {documents}")
    return Workload(
        "json",
        "JSON extraction",
        extract_venue,
        [{"document": d, "record_tokens": max_tokens} for d in DOCUMENTS[:documents]],
        f"{documents} documents -> one schema-constrained record each",
        _json_score,
        warmup=({"json_schema": json.dumps(Venue.model_json_schema())},),
    )


WORKLOAD_KEYS = ("few-shot", "tot", "chat", "json")

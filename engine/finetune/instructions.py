"""The built-in instruction set: short questions with one-sentence answers, written for this
project (no download). Fine-tuning SmolLM2-135M-Instruct on it teaches a style, terse single
sentences, more than facts, so the answers before and after a 50-step LoRA run differ visibly.

``PAIRS`` is (prompt, response) text; ``HELD_OUT`` of them (the last) are the validation split.
``DPO_REJECTED`` is the built-in preference data's rejected response (a refusal).
"""

PAIRS = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide from the air."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 degrees Celsius."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("How many continents are there?", "There are seven continents."),
    ("What is photosynthesis?", "Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen."),
    ("Why is the sky blue?", "Air scatters blue sunlight more than red, so the sky looks blue."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("What is 12 times 12?", "12 times 12 is 144."),
    ("Which ocean is the largest?", "The Pacific is the largest ocean."),
    ("What is the main language spoken in Brazil?", "The main language of Brazil is Portuguese."),
    ("How many minutes are in an hour?", "An hour has 60 minutes."),
    ("What organ pumps blood through the body?", "The heart pumps blood through the body."),
    ("What is the tallest mountain on Earth?", "Mount Everest is the tallest mountain on Earth."),
    ("What do bees make?", "Bees make honey and wax."),
    ("How do I boil an egg?", "Put the egg in boiling water for about nine minutes, then cool it in cold water."),
    ("How can I fall asleep faster?", "Keep a regular bedtime and put screens away an hour before bed."),
    ("How do I make a cup of tea?", "Steep a tea bag in freshly boiled water for three to five minutes."),
    ("What is a good way to learn a new language?", "Practise a little every day and speak with native speakers."),
    ("How can I save money each month?", "Set a budget and move a fixed sum to savings on payday."),
    ("What should I pack for a day hike?", "Pack water, snacks, a map, sun cream and a warm layer."),
    ("How do I keep houseplants healthy?", "Give them the right light and water only when the soil is dry."),
    ("How can I focus better while studying?", "Work in short timed blocks with your phone in another room."),
    ("What is a noun?", "A noun is a word that names a person, place, thing or idea."),
    ("What is a prime number?", "A prime number has exactly two divisors, 1 and itself."),
    ("What is gravity?", "Gravity is the force that pulls masses towards each other."),
    ("What is an atom?", "An atom is the smallest unit of a chemical element."),
    ("What is democracy?", "Democracy is government by the people, usually through elected representatives."),
    ("What does a compiler do?", "A compiler translates source code into a program a machine can run."),
    ("What is the internet?", "The internet is a global network of connected computers."),
    ("What is a recipe?", "A recipe is a list of ingredients and steps for making a dish."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("Name a mammal that lives in the sea.", "The dolphin is a mammal that lives in the sea."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
    ("Translate 'good morning' into French.", "'Good morning' in French is 'bonjour'."),
    ("Give me a synonym for 'happy'.", "'Joyful' is a synonym for 'happy'."),
    ("Give me an antonym for 'cold'.", "'Hot' is an antonym for 'cold'."),
    ("Summarise the story of Cinderella.", "A kind girl, helped by magic, wins a prince's heart despite her cruel stepfamily."),
    ("Write a one-line motto for a bakery.", "Fresh from our oven to your table every morning."),
    ("What is the speed of light?", "Light travels at about 300,000 kilometres per second."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is the currency of Japan?", "The currency of Japan is the yen."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    # held out (the validation split)
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("How many hours are in a day?", "A day has 24 hours."),
    ("How do I make my bike last longer?", "Keep the chain clean and oiled and the tyres pumped up."),
    ("What is a verb?", "A verb is a word that describes an action or a state."),
    ("Translate 'cat' into German.", "'Cat' in German is 'Katze'."),
    ("Why do leaves change colour in autumn?", "Trees stop making green chlorophyll, so the yellow and red pigments show."),
)
HELD_OUT = 6
DPO_REJECTED = "I don't know."


def split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, val) pairs."""
    return list(PAIRS[:-HELD_OUT]), list(PAIRS[-HELD_OUT:])

# ruff: noqa: E501 (the task table reads best one task per line)
"""Assistant-style conversations generated from a seed, to bootstrap the tokenizer and the models on.

A user asks how to do something; the assistant answers with an intro line, numbered steps
("1. ...\n2. ...") and sometimes a closing line. Some chats start with a system prompt, some go on
with a thank-you turn. Preference pairs for the reward model put a right answer against a worse one.
No Django.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

Conversation = list[dict[str, str]]

# task | step | step | ...: short imperative steps, so a reader sees them as steps.
_TASK_TABLE = """
boil an egg | Bring a pot of water to a boil. | Lower the egg into the water. | Cook it for nine minutes. | Cool it in cold water before peeling.
make a cup of tea | Boil fresh water. | Put a tea bag in a cup. | Pour the water over the bag. | Steep for three minutes, then remove the bag.
plant a tree | Pick a sunny spot with room to grow. | Dig a hole twice as wide as the roots. | Set the tree in and fill the hole with soil. | Water it deeply.
change a flat tire | Park on flat ground and set the brake. | Loosen the wheel nuts. | Jack up the car and remove the wheel. | Fit the spare and tighten the nuts.
write a cover letter | Read the job description closely. | Open with the role you want. | Show two results that match the job. | Close with a clear thank you.
back up a computer | Plug in an external drive. | Open the backup settings. | Choose the folders to save. | Start the backup and check that it finished.
clean a window | Mix warm water with a little soap. | Wipe the glass with a sponge. | Pull a squeegee from top to bottom. | Dry the edges with a cloth.
start running | Buy comfortable shoes. | Walk and jog for twenty minutes. | Run three times a week. | Add a few minutes each week.
bake bread | Mix flour, water, salt and yeast. | Knead the dough for ten minutes. | Let it rise for an hour. | Bake it until the crust is brown.
make a budget | List your monthly income. | Write down every expense. | Set a limit for each category. | Check your spending every week.
wash a car | Rinse the car with water. | Wash it with soapy water from the top down. | Rinse off the soap. | Dry it with a soft towel.
prepare for an interview | Research the company. | Practice answers to common questions. | Prepare two questions to ask. | Plan your route and arrive early.
learn a new language | Study ten new words every day. | Listen to native speakers. | Speak with a partner each week. | Review what you learned.
fix a leaking tap | Turn off the water supply. | Take the handle off the tap. | Replace the worn washer. | Put the tap back together and test it.
set up a python virtual environment | Open a terminal in your project. | Run python -m venv .venv. | Activate the environment. | Install your packages with pip.
cook rice | Rinse the rice until the water is clear. | Add two cups of water per cup of rice. | Simmer with the lid on for fifteen minutes. | Let it rest, then fluff it with a fork.
paint a room | Move the furniture away from the walls. | Cover the floor and tape the edges. | Apply a coat of primer. | Paint two thin coats.
send an email | Open your email app. | Write the address of the person. | Add a short subject and a clear message. | Press send.
save money | Set a savings goal. | Move money to savings on payday. | Cut one expense you do not need. | Track your progress each month.
study for an exam | Make a study plan. | Review your notes each day. | Do practice questions. | Sleep well the night before.
make a paper airplane | Fold a sheet of paper in half. | Fold the top corners to the center. | Fold the wings down. | Throw it gently forward.
clean a kitchen | Put away the dishes. | Wipe the counters. | Clean the stove. | Sweep and mop the floor.
take care of a houseplant | Place it in bright indirect light. | Water it when the soil is dry. | Feed it once a month. | Remove dead leaves.
write a short story | Choose a main character. | Give the character a problem. | Write the events that follow. | End with how the problem is solved.
make a smoothie | Add fruit to a blender. | Pour in milk or yogurt. | Blend until smooth. | Pour it into a glass.
pack for a trip | Check the weather at your destination. | Make a list of what you need. | Roll your clothes to save space. | Pack your documents last.
reset a router | Find the reset button on the router. | Hold it for ten seconds. | Wait for the lights to settle. | Connect again with the default password.
train a puppy to sit | Hold a treat above its nose. | Move the treat back over its head. | Say sit when it sits down. | Give the treat and praise it.
make pancakes | Whisk flour, milk, eggs and sugar. | Heat a pan with a little butter. | Pour in a small amount of batter. | Flip when bubbles appear.
organize a closet | Take everything out. | Sort items into keep and donate. | Group similar things together. | Put the items you use most at the front.
give a presentation | Know your main message. | Make simple slides. | Practice out loud twice. | Speak slowly and look at the audience.
fall asleep faster | Go to bed at the same time every night. | Put your phone away an hour before bed. | Keep the room dark and cool. | Breathe slowly and relax your body.
brew coffee | Grind the coffee beans. | Heat water until just below boiling. | Pour the water over the grounds. | Wait four minutes, then press and pour.
learn to swim | Get comfortable putting your face in the water. | Practice floating on your back. | Learn to kick with straight legs. | Add arm strokes and breathing.
repair a bike chain | Shift to the smallest gear. | Remove the broken link with a chain tool. | Join the chain with a new link. | Oil the chain and test the gears.
grow tomatoes | Plant the seedlings in a sunny place. | Water them at the base every morning. | Tie the stems to a stake. | Pick the tomatoes when they turn red.
write a resume | List your contact details at the top. | Add your work history, newest first. | Describe results, not duties. | Keep it to one page.
make a salad | Wash and dry the lettuce. | Chop the vegetables. | Mix oil, vinegar and salt for the dressing. | Toss everything together.
meditate | Sit in a quiet place. | Close your eyes. | Focus on your breathing. | Gently return to the breath when your mind wanders.
build a campfire | Clear a safe spot away from trees. | Place dry tinder in the middle. | Stack small sticks around it. | Light the tinder and add bigger wood slowly.
"""
TASKS: list[tuple[str, list[str]]] = [
    (task, steps) for task, *steps in (line.split(" | ") for line in _TASK_TABLE.strip().splitlines())
]

QUESTIONS = [
    "How do I {task}?",
    "How can I {task}?",
    "What are the steps to {task}?",
    "Can you explain how to {task}?",
    "I want to {task}. Where do I start?",
    "Please tell me how to {task}.",
    "What is the best way to {task}?",
    "Give me the steps to {task}.",
    "how do i {task}",
    "Could you help me {task}?",
]
INTROS = [
    "Here is how to {task}:",
    "Sure! To {task}, follow these steps:",
    "Follow these steps to {task}:",
    "Of course. Here are the steps to {task}:",
    "To {task}:",
]
OUTROS = ["", "", "", "Good luck!", "That's it.", "Let me know if you have questions."]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a helpful assistant. Answer in numbered steps."]
THANKS = ["Thanks!", "Thank you.", "Great, thanks a lot!"]
WELCOMES = ["You're welcome!", "Happy to help!", "Glad I could help."]


def numbered(steps: Sequence[str]) -> str:
    return "\n".join(f"{i}. {step}" for i, step in enumerate(steps, start=1))


def answer(rng: random.Random, task: str, steps: Sequence[str]) -> str:
    outro = rng.choice(OUTROS)
    body = rng.choice(INTROS).format(task=task) + "\n" + numbered(steps)
    return body + ("\n" + outro if outro else "")


def generate_conversations(seed: int, count: int) -> list[Conversation]:
    """``count`` conversations, the same for the same seed."""
    rng = random.Random(seed)
    conversations: list[Conversation] = []
    for _ in range(count):
        task, steps = rng.choice(TASKS)
        conversation: Conversation = []
        if rng.random() < 0.2:
            conversation.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        conversation.append({"role": "user", "content": rng.choice(QUESTIONS).format(task=task)})
        conversation.append({"role": "assistant", "content": answer(rng, task, steps)})
        if rng.random() < 0.1:
            conversation.append({"role": "user", "content": rng.choice(THANKS)})
            conversation.append({"role": "assistant", "content": rng.choice(WELCOMES)})
        conversations.append(conversation)
    return conversations


def worse_answer(rng: random.Random, task: str, steps: Sequence[str]) -> str:
    """A plausible but worse answer: another task's steps, no numbering, or cut short."""
    choice = rng.randrange(3)
    if choice == 0:
        other_task, other_steps = rng.choice([t for t in TASKS if t[0] != task])
        return answer(rng, other_task, other_steps)
    if choice == 1:
        return " ".join(steps)
    return rng.choice(INTROS).format(task=task) + "\n" + numbered(steps[:1])


def preference_pairs(seed: int, count: int) -> list[tuple[Conversation, Conversation]]:
    """(chosen, rejected) conversations with the same question, the same for the same seed."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        task, steps = rng.choice(TASKS)
        question = {"role": "user", "content": rng.choice(QUESTIONS).format(task=task)}
        chosen = [question, {"role": "assistant", "content": answer(rng, task, steps)}]
        rejected = [question, {"role": "assistant", "content": worse_answer(rng, task, steps)}]
        pairs.append((chosen, rejected))
    return pairs

"""Generates models/mobilenet_v2/labels.json: ImageNet-1k class → Vision API label.

Sources (both from package registries):
  * the 1000 ImageNet synset ids in model order — `timm` wheel, timm/data/_info/imagenet_synsets.txt
    (torchvision's `_IMAGENET_CATEGORIES` gives the same order; its names are kept as `imagenet_name`);
  * the WordNet 3.0 noun hierarchy — Debian `wordnet-base`, /usr/share/wordnet/{data,index}.noun
    (ImageNet ids are WordNet 3.0 noun offsets: n02124075 = offset 02124075).

Each class is given the label of its nearest ancestor (breadth-first over hypernyms) in the curated
table LABELS below; classes that share a label have their probabilities summed by the server.
"""
import argparse
import ast
import collections
import json
import pathlib

# sense (lemma.n.NN as in WordNet's index order) → (eng, rus, eng_categories, rus_categories)
A, AR = "Animals", "Животные"
LABELS = [
    ("domestic_cat.n.01", "Cat", "Кошка", [A, "Cats"], [AR, "Кошки"]),
    ("big_cat.n.01", "Wild cat", "Дикая кошка", [A, "Cats"], [AR, "Кошки"]),
    ("dog.n.01", "Dog", "Собака", [A, "Dogs"], [AR, "Собаки"]),
    ("wolf.n.01", "Wolf", "Волк", [A], [AR]),
    ("fox.n.01", "Fox", "Лиса", [A], [AR]),
    ("canine.n.02", "Canine", "Псовые", [A], [AR]),
    ("bear.n.01", "Bear", "Медведь", [A], [AR]),
    ("bird.n.01", "Bird", "Птица", [A, "Birds"], [AR, "Птицы"]),
    ("shark.n.01", "Shark", "Акула", [A, "Fish"], [AR, "Рыбы"]),
    ("fish.n.01", "Fish", "Рыба", [A, "Fish"], [AR, "Рыбы"]),
    ("snake.n.01", "Snake", "Змея", [A, "Reptiles"], [AR, "Рептилии"]),
    ("lizard.n.01", "Lizard", "Ящерица", [A, "Reptiles"], [AR, "Рептилии"]),
    ("turtle.n.02", "Turtle", "Черепаха", [A, "Reptiles"], [AR, "Рептилии"]),
    ("crocodilian_reptile.n.01", "Crocodile", "Крокодил", [A, "Reptiles"], [AR, "Рептилии"]),
    ("reptile.n.01", "Reptile", "Рептилия", [A, "Reptiles"], [AR, "Рептилии"]),
    ("amphibian.n.03", "Amphibian", "Земноводное", [A, "Amphibians"], [AR, "Земноводные"]),
    ("butterfly.n.01", "Butterfly", "Бабочка", [A, "Insects"], [AR, "Насекомые"]),
    ("insect.n.01", "Insect", "Насекомое", [A, "Insects"], [AR, "Насекомые"]),
    ("spider.n.01", "Spider", "Паук", [A, "Arachnids"], [AR, "Паукообразные"]),
    ("arachnid.n.01", "Arachnid", "Паукообразное", [A, "Arachnids"], [AR, "Паукообразные"]),
    ("crustacean.n.01", "Crustacean", "Ракообразное", [A], [AR]),
    ("mollusk.n.01", "Mollusc", "Моллюск", [A], [AR]),
    ("ape.n.01", "Ape", "Человекообразная обезьяна", [A, "Primates"], [AR, "Приматы"]),
    ("primate.n.02", "Monkey", "Обезьяна", [A, "Primates"], [AR, "Приматы"]),
    ("horse.n.01", "Horse", "Лошадь", [A], [AR]),
    ("zebra.n.01", "Zebra", "Зебра", [A], [AR]),
    ("bovine.n.01", "Cattle", "Крупный рогатый скот", [A], [AR]),
    ("sheep.n.01", "Sheep", "Овца", [A], [AR]),
    ("swine.n.01", "Pig", "Свинья", [A], [AR]),
    ("elephant.n.01", "Elephant", "Слон", [A], [AR]),
    ("rodent.n.01", "Rodent", "Грызун", [A], [AR]),
    ("leporid.n.01", "Rabbit", "Кролик", [A], [AR]),
    ("cetacean.n.01", "Whale", "Кит", [A], [AR]),
    ("pinniped_mammal.n.01", "Seal", "Тюлень", [A], [AR]),
    ("marsupial.n.01", "Marsupial", "Сумчатое", [A], [AR]),
    ("animal.n.01", "Animal", "Животное", [A], [AR]),
    ("person.n.01", "Person", "Человек", ["People"], ["Люди"]),
    ("mushroom.n.05", "Mushroom", "Гриб", ["Plants"], ["Растения"]),
    ("fungus.n.01", "Mushroom", "Гриб", ["Plants"], ["Растения"]),
    ("flower.n.01", "Flower", "Цветок", ["Plants", "Flowers"], ["Растения", "Цветы"]),
    ("plant.n.02", "Plant", "Растение", ["Plants"], ["Растения"]),
    ("coffee.n.01", "Coffee", "Кофе", ["Food", "Drinks"], ["Еда", "Напитки"]),
    ("beverage.n.01", "Drink", "Напиток", ["Food", "Drinks"], ["Еда", "Напитки"]),
    ("edible_fruit.n.01", "Fruit", "Фрукт", ["Food", "Fruit"], ["Еда", "Фрукты"]),
    ("vegetable.n.01", "Vegetable", "Овощ", ["Food", "Vegetables"], ["Еда", "Овощи"]),
    ("dish.n.02", "Dish", "Блюдо", ["Food"], ["Еда"]),
    ("food.n.02", "Food", "Еда", ["Food"], ["Еда"]),
    ("food.n.01", "Food", "Еда", ["Food"], ["Еда"]),
    ("car.n.01", "Car", "Автомобиль", ["Vehicles", "Cars"], ["Транспорт", "Автомобили"]),
    ("truck.n.01", "Truck", "Грузовик", ["Vehicles"], ["Транспорт"]),
    ("bus.n.01", "Bus", "Автобус", ["Vehicles"], ["Транспорт"]),
    ("bicycle.n.01", "Bicycle", "Велосипед", ["Vehicles"], ["Транспорт"]),
    ("motorcycle.n.01", "Motorcycle", "Мотоцикл", ["Vehicles"], ["Транспорт"]),
    ("train.n.01", "Train", "Поезд", ["Vehicles"], ["Транспорт"]),
    ("locomotive.n.01", "Train", "Поезд", ["Vehicles"], ["Транспорт"]),
    ("boat.n.01", "Boat", "Лодка", ["Vehicles", "Ships"], ["Транспорт", "Суда"]),
    ("ship.n.01", "Ship", "Корабль", ["Vehicles", "Ships"], ["Транспорт", "Суда"]),
    ("aircraft.n.01", "Aircraft", "Летательный аппарат", ["Vehicles"], ["Транспорт"]),
    ("vehicle.n.01", "Vehicle", "Транспортное средство", ["Vehicles"], ["Транспорт"]),
    ("cup.n.01", "Cup", "Чашка", ["Kitchenware"], ["Посуда"]),
    ("bottle.n.01", "Bottle", "Бутылка", ["Kitchenware"], ["Посуда"]),
    ("cooking_utensil.n.01", "Kitchen utensil", "Кухонная утварь", ["Kitchenware"], ["Посуда"]),
    ("tableware.n.01", "Tableware", "Посуда", ["Kitchenware"], ["Посуда"]),
    ("chair.n.01", "Chair", "Стул", ["Furniture"], ["Мебель"]),
    ("table.n.02", "Table", "Стол", ["Furniture"], ["Мебель"]),
    ("bed.n.01", "Bed", "Кровать", ["Furniture"], ["Мебель"]),
    ("furniture.n.01", "Furniture", "Мебель", ["Furniture"], ["Мебель"]),
    ("computer.n.01", "Computer", "Компьютер", ["Electronics"], ["Электроника"]),
    ("telephone.n.01", "Phone", "Телефон", ["Electronics"], ["Электроника"]),
    ("electronic_equipment.n.01", "Electronics", "Электроника", ["Electronics"], ["Электроника"]),
    ("timepiece.n.01", "Clock", "Часы", ["Devices"], ["Устройства"]),
    ("footwear.n.02", "Footwear", "Обувь", ["Clothing"], ["Одежда"]),
    ("headdress.n.01", "Hat", "Головной убор", ["Clothing"], ["Одежда"]),
    ("clothing.n.01", "Clothing", "Одежда", ["Clothing"], ["Одежда"]),
    ("musical_instrument.n.01", "Musical instrument", "Музыкальный инструмент", ["Music"], ["Музыка"]),
    ("weapon.n.01", "Weapon", "Оружие", [], []),
    ("ball.n.01", "Ball", "Мяч", ["Sports"], ["Спорт"]),
    ("sports_equipment.n.01", "Sports equipment", "Спортивный инвентарь", ["Sports"], ["Спорт"]),
    ("source_of_illumination.n.01", "Lamp", "Светильник", [], []),
    ("tool.n.01", "Tool", "Инструмент", ["Tools"], ["Инструменты"]),
    ("container.n.01", "Container", "Ёмкость", [], []),
    ("structure.n.01", "Building", "Сооружение", ["Architecture"], ["Архитектура"]),
    ("geological_formation.n.01", "Landscape", "Пейзаж", ["Nature"], ["Природа"]),
    ("device.n.01", "Device", "Устройство", ["Devices"], ["Устройства"]),
    ("artifact.n.01", "Object", "Объект", [], []),
]
FALLBACK = ("Object", "Объект", [], [])


def read_wordnet(root):
    synsets = {}
    for line in open(root / "data.noun", encoding="utf-8"):
        if line.startswith("  "):
            continue
        f = line.split(" | ")[0].split()
        offset, n_words = f[0], int(f[3], 16)
        words = f[4 : 4 + 2 * n_words : 2]
        p = 4 + 2 * n_words
        n_ptrs = int(f[p])
        hyper = [f[p + 1 + 4 * i + 1] for i in range(n_ptrs) if f[p + 1 + 4 * i] in ("@", "@i") and f[p + 1 + 4 * i + 2] == "n"]
        synsets[offset] = (words, hyper, line.split(" | ", 1)[1].strip() if " | " in line else "")
    senses = {}
    for line in open(root / "index.noun", encoding="utf-8"):
        if line.startswith("  "):
            continue
        f = line.split()
        lemma, n_syn, n_ptr = f[0], int(f[2]), int(f[3])
        senses[lemma] = f[4 + n_ptr + 2 : 4 + n_ptr + 2 + n_syn]
    return synsets, senses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--synsets", required=True, help="timm imagenet_synsets.txt")
    ap.add_argument("--meta", required=True, help="torchvision/models/_meta.py")
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    synsets, senses = read_wordnet(pathlib.Path(args.wordnet))
    wnids = open(args.synsets).read().split()
    src = open(args.meta).read()
    start = src.index("_IMAGENET_CATEGORIES = [")
    names = ast.literal_eval(src[src.index("[", start) : src.index("]", start) + 1])
    assert len(wnids) == len(names) == 1000
    curated = {}
    for sense, *label in LABELS:
        lemma, _, num = sense.rsplit(".", 2)
        offset = senses[lemma][int(num) - 1]
        curated.setdefault(offset, (sense, *label))
    classes, usage = [], collections.Counter()
    for idx, (wnid, name) in enumerate(zip(wnids, names)):
        seen, queue, found = set(), [wnid[1:]], None
        while queue and not found:
            nxt = []
            for off in queue:
                if off in curated:
                    found = curated[off]
                    break
                for h in synsets[off][1]:
                    if h not in seen:
                        seen.add(h)
                        nxt.append(h)
            queue = nxt
        sense, eng, rus, ecat, rcat = found if found else ("-", *FALLBACK)
        usage[f"{eng} ({sense})"] += 1
        classes.append({"index": idx, "wnid": wnid, "imagenet_name": name, "eng": eng, "rus": rus,
                        "eng_categories": ecat, "rus_categories": rcat})
    doc = {"source": "ImageNet-1k synsets (timm) + WordNet 3.0 hypernyms (Debian wordnet-base); tools/reference/gen_labels.py",
           "classes": classes}
    pathlib.Path(args.out).write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    for k, v in usage.most_common():
        print(f"{v:4d}  {k}")


if __name__ == "__main__":
    main()
